"""charge-exactly-once: payments instances crash right after they make a charge, under load.

Clients place orders through the gateway (POST /orders), each with an Idempotency-Key of its own,
and place an order again with the same key when the answer is a 5xx or no answer (as a careful
client does). orders charges through its sidecar with a key per order; the payments service's policy
(`services.payments.policies`) at that sidecar holds the key (`idempotency`) and retries a charge
only where it cannot have run twice: a connection refused or reset before a byte was sent, or a 503
(the instance's sidecar found no app). Two of three payments instances crash, each right after
making a charge: that charge is made but never answered, so its order gets a 502, and the order
placed again gets the kept answer instead of a second charge.

SLO: every order is charged exactly once, counted at payments (each instance appends every charge
with its key to a ledger before answering), and every client gets an HTTP answer.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from tools.scenario import Report, Run, main
from tools.testbed import Sample

from . import _mesh

TITLE = "payments instances crash right after making a charge, under load"
CHARGE_ONCE = {"idempotency": {"methods": ["POST"]},
               "retries": {"attempts": 3, "retry_on": ["connect-failure", "reset-before-request",
                                                       "retriable-status-codes"],
                           "retriable_status_codes": [503], "non_idempotent": True,
                           "backoff": {"base": "5ms", "max": "50ms"}},
               "timeout": {"request": "5s", "per_try": "2s"}}


class Orders:
    """A bounded load of orders, each with its own key, placed again (same key) after a 5xx or no answer."""

    def __init__(self, url: str, rate: float, threads: int = 3, again: int = 1):
        self.url, self.rate, self.threads, self.again = url, rate, threads, again
        self.samples: list[Sample] = []  # every answer, placed-again ones included
        self.final: dict[str, int] = {}  # order key → the status of its last answer (0: none)
        self.placed_again = 0
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.started = 0.0

    def start(self) -> Orders:
        self.started = time.time()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(30)

    def _send(self, conn, key: str) -> tuple[int, http.client.HTTPConnection | None]:
        host, port = self.url.split("//")[1].split(":")
        conn = conn or http.client.HTTPConnection(host, int(port), timeout=15)
        start = time.time()
        try:
            conn.request("POST", "/orders", body=json.dumps({"item_id": 1, "quantity": 1}),
                         headers={"content-type": "application/json", "idempotency-key": key})
            r = conn.getresponse()
            body = json.loads(r.read() or b"null")
            body = body if isinstance(body, dict) else None
            self.samples.append(Sample(start, time.time(), r.status, None, "", body))
            return r.status, conn
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.samples.append(Sample(start, time.time(), 0, None, repr(e)))
            conn.close()
            return 0, None

    def _run(self, index: int) -> None:
        interval = self.threads / self.rate
        next_at = time.monotonic() + interval * index / self.threads
        conn = None
        while not self._stop.wait(max(next_at - time.monotonic(), 0.0)):
            next_at += interval
            with self._lock:
                key = f"o-{self._next}"
                self._next += 1
            status, conn = self._send(conn, key)
            for _ in range(self.again):
                if status not in (0,) and status < 500:
                    break
                self.placed_again += 1
                time.sleep(0.2)
                status, conn = self._send(conn, key)
            self.final[key] = status
        if conn is not None:
            conn.close()


def ledger_for(s, workdir: Path) -> Path:
    """The file an instance's app appends its charges to. An app in a pod runs as a uid of its own
    that cannot enter the work directory (root's, mode 0700): its ledger is a file of its own in a
    directory of the run's (under the work directory's name in /tmp), removed with the run."""
    if s.inst.pod is None:
        return workdir / f"{s.name}.ledger"
    folder = Path(f"{workdir}-ledgers")
    folder.mkdir(mode=0o711, exist_ok=True)
    path = folder / f"{s.name}.ledger"
    path.touch(mode=0o600)
    os.chown(path, s.inst.pod.uid, s.inst.pod.uid)
    return path


def run(r: Run) -> Report:
    seconds, crashes = r.pick(12.0, 5.0), r.pick((3.0, 7.0), (1.5, 3.0))
    rate = 10
    services = {"payments": {"policies": ["charge-once"]}}
    with _mesh.sidecar_mesh(r, services=services, policies={"charge-once": CHARGE_ONCE}) as m:
        r.say("starting the gateway, orders, catalog and three payments instances with their sidecars")
        instances = _mesh.start_orders(m)
        payments = instances[2:]
        ledgers = {s.name: ledger_for(s, r.workdir) for s in payments}
        for s in payments:
            s.knobs(ledger=str(ledgers[s.name]))
        watched = _mesh.proxies(m, instances)
        watched.baseline()
        r.say(f"load: {rate} orders/s for {seconds:g} s, each placed again after a 5xx; {payments[0].name} "
              f"crashes after a charge from {crashes[0]:g} s, {payments[1].name} from {crashes[1]:g} s")
        watched.start()
        load = Orders(m.url, rate).start()
        crashed_at = []
        try:
            for s, at in zip(payments[:2], crashes):
                time.sleep(max(load.started + at - time.time(), 0))
                s.knobs(crash_after_charge=True)
                crashed_at.append(time.time() - load.started)
                r.say(f"{s.name} crashes right after its next charge")
            _mesh.rest(load, seconds)
        finally:
            load.stop()
            watched.stop()
        dead = [s.name for s in payments if s.app.proc.poll() is not None]

    charges: collections.Counter[str] = collections.Counter()
    by_instance: collections.Counter[str] = collections.Counter()
    for name, path in ledgers.items():
        for line in path.read_text().splitlines() if path.exists() else ():
            _, key, _ = line.split(" ", 2)
            charges[key.removeprefix("order-").rpartition("@")[0]] += 1  # order-<key>@<caller>
            by_instance[name] += 1
    for folder in {path.parent for path in ledgers.values()} - {r.workdir}:  # the pods' ledgers, read
        shutil.rmtree(folder, ignore_errors=True)
    report = Report("charge-exactly-once", TITLE, samples=load.samples, started=load.started, proxies=watched)
    report.mesh = _mesh.describe(m, instances)
    report.load = (f"POST /orders with an Idempotency-Key each, {rate}/s on 3 connections for {seconds:g} s, "
                   f"placed again once with the same key after a 5xx or no answer; each order: orders → "
                   f"catalog, orders → payments (through the sidecars, with a key per order)")
    report.fault = (f"{payments[0].name} and {payments[1].name} exit right after making a charge, from "
                    + " and ".join(f"{t:.1f} s" for t in crashed_at) + f" (crashed: {', '.join(dead) or 'none'})")
    report.slo = "every order charged exactly once (counted at payments); every client gets an answer"
    orders = list(load.final)
    counts = collections.Counter(charges[k] for k in orders)
    unanswered = sum(1 for s in load.samples if s.status == 0)
    answers = collections.Counter(load.final.values())
    report.figure("orders placed", f"{len(orders)} ({load.placed_again} placed again)")
    report.figure("last answer per order", ", ".join(f"{k} {v}" for k, v in sorted(answers.items())))
    report.figure("charges each payments app made", ", ".join(f"{k} {by_instance[k]}" for k in ledgers))
    report.figure("orders by charges made", ", ".join(f"{n}× {c}" for n, c in sorted(counts.items())))
    report.check("payments crashed right after a charge", len(dead) == 2, ", ".join(dead) or "none")
    twice = sum(v for k, v in counts.items() if k > 1)
    report.check("every order charged exactly once", orders and counts == {1: len(orders)},
                 f"{counts.get(1, 0)} of {len(orders)} once; twice or more {twice}; never {counts.get(0, 0)}")
    report.check("every client gets an answer", unanswered == 0 and load.samples,
                 f"{len(load.samples) - unanswered} of {len(load.samples)} answered")
    return report


if __name__ == "__main__":
    sys.exit(main("charge-exactly-once"))
