"""Failure scenarios, each a runnable script: it brings up a mesh of real processes (demo apps with
their sidecars, the gateway), drives a steady load, injects one fault, and prints a report with
PASS or FAIL against the SLO it states. `mitmesh scenario --list`; `mitmesh scenario NAME [--short]`
(or `python -m scenarios.NAME`)."""

# in the order of the issue; a name is its module's name with '-' for '_'
ALL = ("instance-killed", "slow-instance", "payments-error-burst", "breaker", "zone-outage",
       "partition", "cert-expiry", "charge-exactly-once", "region-outage",
       "control-plane-loss")

# listed but not runnable yet, with the reason (`--list` says so; `all` leaves them out)
PENDING: dict[str, str] = {}
