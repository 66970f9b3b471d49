"""mitmproxy's HTTP layer with the guards an edge proxy needs where mitmproxy offers no hook: bodies
stop at the route's limit instead of being read whole, an answer made before the body leaves at once,
mitmproxy's own error pages become our JSON, a request head has a size cap, and an HTTP/2 client that
resets streams too fast gets GOAWAY (CVE-2023-44487); and an HTTP/2 response that is complete when
sent leaves in one write (HEADERS and the DATA frame that ends the stream).

`HttpGuard` (addons/httpguard.py) puts `GuardedHttpLayer` in place of every `HttpLayer` that
mitmproxy's next_layer decision makes; everything else is mitmproxy's own code, unchanged. With
`engine: fast`, HTTP/1.1 request heads are parsed by httptools (`FastHttp1Server`).
"""

from __future__ import annotations

import html
import logging
import re
import time

import h11
import h2.errors
import h2.events
from h11._readers import ChunkedReader
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.http import Headers, Request
from mitmproxy.proxy.layers.http import (DropStream, ErrorCode, HttpLayer, HttpResponseHeadersHook, HttpStream,
                                         ReceiveHttp, RequestEndOfMessage, RequestHeaders, ResponseData,
                                         ResponseEndOfMessage, ResponseHeaders, ResponseProtocolError, SendHttp)
from mitmproxy.proxy.layers.http._http1 import Http1Server, make_body_reader
from mitmproxy.proxy.layers.http._http2 import (Http2Server, format_h2_response_headers,
                                                parse_h2_request_headers)

from mesh.config.types import shown
from mesh.core.downstream import LINGER, ResetWindow

from . import keys, replies
from .sizelimit import too_large

log = logging.getLogger("mitmesh.http")
_PARAGRAPH = re.compile(rb"<p>(.*?)</p>", re.S)  # the message in mitmproxy's error page

# what mitmproxy's own refusals become: (error, reason) of our JSON answer
_REFUSALS = {
    ErrorCode.REQUEST_VALIDATION_FAILED: ("invalid_request", "the request head is ambiguous or invalid "
                                                             "(RFC 9110/9112): {what}"),
    ErrorCode.GENERIC_CLIENT_ERROR: ("bad_request", "the request is not valid HTTP: {what}"),
    ErrorCode.DESTINATION_UNKNOWN: ("invalid_host", "the request names no host"),
    ErrorCode.REQUEST_TOO_LARGE: ("body_too_large", "the request body is too large"),
}
# mitmproxy's texts (which quote the client's bytes and name its own options) in mitmesh's words:
# a client hears what is wrong with its request, the log keeps the library's message
_WHAT = (("transfer-encoding and content-length", "both Content-Length and Transfer-Encoding"),
         ("content-length", "an invalid or repeated Content-Length"),
         ("transfer-encoding", "a Transfer-Encoding that does not frame the body (RFC 9112 §6.1)"),
         ("header name", "a header name that is not a token"),
         ("header line", "a header line without a colon"),
         ("request line", "a malformed request line"),
         ("scheme", "an unknown scheme"),
         ("http version", "an unknown HTTP version"))


def in_our_words(message: str) -> str:
    lower = message.lower()
    return next((ours for key, ours in _WHAT if key in lower), "a malformed request")


class Limits:
    """What the layers of one connection enforce, from the proxy's `http` settings at its start."""

    __slots__ = ("max_head", "max_resets", "reset_window", "fast")

    def __init__(self, max_head: int, max_resets: int, reset_window: float, fast: bool = False):
        self.max_head, self.max_resets, self.reset_window = max_head, max_resets, reset_window
        self.fast = fast  # engine: fast, HTTP/1.1 heads read by FastHttp1Server
        if fast:
            global httptools  # its parser: imported when a config first asks for the fast engine
            import httptools


class StopReading(ResponseProtocolError):
    """Sent to the client connection after an answer made before the request body was read: HTTP/1
    half-closes and drops what still comes (LINGER), HTTP/2 resets the stream with NO_ERROR, which
    asks the client to stop sending without error (RFC 9113 §8.1)."""

    def __init__(self, stream_id: int):
        super().__init__(stream_id, "answered before the request body was read", ErrorCode.CANCEL)


def refusal(event: ResponseProtocolError, status: int):
    error, reason = _REFUSALS.get(event.code, ("bad_request", "the request was refused: {what}"))
    log.info(f"refused a request mitmproxy could not take ({status}): {shown(event.message)}")
    return replies.without_flow(status, error, reason.format(what=in_our_words(event.message)))


class GuardedStream(HttpStream):
    def state_wait_for_request_headers(self, event):
        yield from _without(super().state_wait_for_request_headers(event), self._continue_of_answered)
        # an addon answered at requestheaders (401, 404, a 413 by Content-Length, …) while a body is
        # on its way: the answer leaves now, where mitmproxy would first read the whole body (a body
        # that arrived whole already is consumed as before, and the connection kept)
        if (self.client_state == self.state_consume_request_body and self.flow.response is not None
                and not event.end_stream
                and not any(isinstance(e, RequestEndOfMessage) for e in self._paused_event_queue)):
            yield from self.answer_now()

    def _continue_of_answered(self, command) -> bool:
        """mitmproxy's `100 Continue` for a request an addon already answered: never sent."""
        return (isinstance(command, SendHttp) and isinstance(command.event, ResponseHeaders)
                and command.event.response.status_code == 100 and self.flow.response is not None)

    def check_body_size(self, request: bool):
        st = keys.get(self.flow) if request else None
        if st is not None and st.max_body is not None and len(self.request_body_buf) > st.max_body \
                and self.client_state == self.state_consume_request_body and self.flow.live \
                and self.flow.response is None:
            too_large(self.flow, st, len(self.request_body_buf), st.max_body, so_far=True)
            yield from self.answer_now()
            return True
        return (yield from super().check_body_size(request))

    def answer_now(self):
        """Send the flow's answer before its request is complete, and stop reading the request."""
        self.client_state = self.state_errored  # what still arrives is dropped, never buffered
        self.request_body_buf.clear()
        self.flow.response.headers["connection"] = "close"
        self.flow.response.timestamp_start = time.time()
        yield HttpResponseHeadersHook(self.flow)
        yield from self.send_response()
        if not self.flow.live:
            # the client closed while the hooks ran (a body cut short): send_response found the flow
            # killed, told the connection so and sent nothing, so there is no response to end
            return
        self.flow.live = False
        # mitmproxy ends the response only once the request is done (flow_done): end it now
        yield SendHttp(ResponseEndOfMessage(self.stream_id), self.context.client)
        yield SendHttp(StopReading(self.stream_id), self.context.client)
        yield DropStream(self.stream_id)


def _without(generator, drop):
    """Delegate to a layer's command generator (replies of blocking commands included), leaving out
    the commands `drop` picks."""
    reply = None
    while True:
        try:
            command = generator.send(reply)
        except StopIteration as stop:
            return stop.value
        reply = None if drop(command) else (yield command)


class GuardedHttp1Server(Http1Server):
    limits: Limits

    def send(self, event):
        if isinstance(event, StopReading):
            if self.conn.state & ConnectionState.CAN_WRITE:
                yield commands.CloseTcpConnection(self.conn, half_close=True)
            self.state = self.linger
            yield commands.RequestWakeup(LINGER)
            return
        status = event.code.http_status_code() if isinstance(event, ResponseProtocolError) else None
        if status is not None and not self.response and self.conn.state & ConnectionState.CAN_WRITE:
            yield commands.SendData(self.conn, http1.assemble_response(refusal(event, status)))
            yield commands.CloseConnection(self.conn)
            return
        yield from super().send(event)

    def read_headers(self, event):
        for command in super().read_headers(event):
            if isinstance(command, commands.SendData) and self.state == self.read_headers:
                # mitmproxy's HTML page for a head it cannot parse: the same refusal, as our JSON
                found = _PARAGRAPH.search(command.data)
                message = html.unescape(found[1].decode("utf-8", "replace")) if found else ""
                log.info(f"refused a request head mitmproxy could not parse: "
                         f"{shown(message[:300])}")
                command = commands.SendData(self.conn, http1.assemble_response(replies.without_flow(
                    400, "bad_request", f"the request head is not valid HTTP/1.1 (RFC 9112): "
                                        f"{in_our_words(message)}")))
            yield command
        if self.state == self.read_headers and len(self.buf) > self.limits.max_head:
            # mitmproxy would buffer an endless head ("FIXME: protect against header size DoS")
            yield commands.SendData(self.conn, http1.assemble_response(replies.without_flow(
                431, "headers_too_large", f"the request head exceeds {self.limits.max_head} bytes")))
            yield commands.CloseConnection(self.conn)
            self.state = self.done

    def read_body(self, event):
        if type(self.body_reader) is ChunkedReader:
            self.body_reader = TrailersDropped(self.body_reader, self.limits.max_head)
        for command in super().read_body(event):
            if isinstance(command, commands.CloseConnection) and self.response is None \
                    and self.conn.state & ConnectionState.CAN_WRITE:
                if getattr(self.body_reader, "too_large", False):
                    answer = replies.without_flow(
                        431, "headers_too_large",
                        f"the request's trailer section exceeds {self.limits.max_head} bytes")
                else:  # a broken chunk size or a body cut short: mitmproxy closes without a word
                    answer = replies.without_flow(400, "invalid_body", "the request body's "
                                                  "framing is not valid (RFC 9112 §6-7)")
                yield commands.SendData(self.conn, http1.assemble_response(answer))
            yield command

    def linger(self, event):
        """After an early answer: drop what the client still sends until it closes or LINGER passes."""
        if isinstance(event, events.DataReceived):
            self.buf = type(self.buf)()
        else:  # the client closed, or the wakeup
            yield commands.CloseConnection(self.conn)


class TrailersDropped:
    """h11's chunked body reader, with the trailer section read and discarded: mitmproxy raises
    NotImplementedError on one (no answer, a traceback per request). RFC 9110 §6.5.1 lets a
    recipient discard trailer fields, Envoy's HTTP/1 codec drops them by default and nginx ignores
    them; the body is sent upstream whole with a Content-Length, so they have nowhere to go, and are
    never made headers."""

    __slots__ = ("reader", "limit", "too_large")

    def __init__(self, reader: ChunkedReader, limit: int):
        self.reader, self.limit, self.too_large = reader, limit, False

    def __call__(self, buf):
        event = self.reader(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            log.debug(f"dropped a request's trailer section of {len(event.headers)} fields")
            return h11.EndOfMessage()
        if event is None and self.reader._reading_trailer and len(buf) > self.limit:
            self.too_large = True  # h11 would buffer an endless trailer section, as a head
            raise h11.RemoteProtocolError("trailer section over the request head limit")
        return event

    def read_eof(self):
        return self.reader.read_eof()


class FastHttp1Server(GuardedHttp1Server):
    """`engine: fast`: request heads parsed by httptools (llhttp, Node's parser) instead of mitmproxy's
    line splitting; everything after the head (body framing, the streams, hooks, responses) is
    mitmproxy's. A head it does not take plainly (llhttp refuses it, bare LF line ends, obs-fold,
    no origin-form target, Transfer-Encoding, upgrades, CONNECT, a head over the size cap) goes to
    mitmproxy's parser unchanged, so every refusal is the standard engine's, byte for byte."""

    def read_headers(self, event):
        if isinstance(event, events.DataReceived):
            request = self._fast_head()
            if request is not None:
                try:
                    expected = http1.expected_http_body_size(request)
                except ValueError:  # never for the heads _fast_head takes; mitmproxy answers if so
                    expected = None
                if expected is not None:
                    self.request = request
                    yield ReceiveHttp(RequestHeaders(self.stream_id, request, expected == 0))
                    self.body_reader = make_body_reader(expected)
                    self.state = self.read_body
                    yield from self.state(event)
                    return
                self.buf._data[:0] = self._head  # undo: mitmproxy's parser reads it
        yield from super().read_headers(event)

    def _fast_head(self) -> Request | None:
        data = self.buf._data
        end = data.find(b"\r\n\r\n", 0, self.limits.max_head)
        if end <= 0 or data[0] in b"\r\n":  # (llhttp skips leading empty lines, mitmproxy does not)
            return None
        head = bytes(data[:end + 4])
        if head.count(b"\n") != head.count(b"\r\n") or b"\n " in head or b"\n\t" in head:
            return None  # bare LF or obs-fold: mitmproxy's own reading of them
        parsed = _HeadParser()
        parser = httptools.HttpRequestParser(parsed)
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # malformed; an upgrade, CONNECT
            return None
        target = parsed.url
        if not parsed.complete or not target.startswith(b"/") or parsed.te:
            return None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            return None
        del data[:end + 4]
        self.buf._next_line_search = self.buf._multiple_lines_search = 0
        self._head = head
        return Request(host="", port=0, method=parser.get_method(), scheme=b"", authority=b"",
                       path=target, http_version=b"HTTP/" + version.encode(),
                       headers=Headers(parsed.fields), content=None, trailers=None,
                       timestamp_start=time.time(), timestamp_end=None)


class _HeadParser:
    """httptools callbacks for one request head."""

    __slots__ = ("url", "fields", "complete", "te")

    def __init__(self):
        self.url, self.fields, self.complete, self.te = b"", [], False, False

    def on_url(self, url: bytes):
        self.url += url

    def on_header(self, name: bytes, value: bytes):
        if name.lower() == b"transfer-encoding":
            self.te = True
        self.fields.append((name, value.strip(b" \t")))

    def on_headers_complete(self):
        self.complete = True


class WholeResponseHttp2Server(Http2Server):
    """mitmproxy's HTTP/2 server side, sending a complete response in one piece.

    mitmproxy sends a response's HEADERS, its DATA and an empty DATA frame that ends the stream as
    three SendData commands: each goes down every layer and becomes a TLS record of its own, about
    6 % of an HTTP/2 request's instructions. A response that is complete when sent (what Forward and
    replies make; not a streamed one) comes as ResponseHeaders and ResponseData in one go, so its
    headers wait in the h2 connection for the body, and the body's frame ends the stream unless
    trailers follow: one SendData, two frames. Everything else (streamed bodies, trailers, empty
    bodies, errors) goes the stock way.
    """

    def __init__(self, context):
        super().__init__(context)
        self.whole: dict[int, bool] = {}  # stream → end it with the body (no trailers follow)
        self.ended: set[int] = set()  # streams whose body frame ended them: their EOM sends nothing

    def _handle_event(self, event):
        if isinstance(event, ResponseHeaders):
            r = event.response
            if not event.end_stream and not r.stream and r.raw_content and self.is_open_for_us(event.stream_id):
                headers = yield from format_h2_response_headers(self.context, event)
                self.h2_conn.send_headers(event.stream_id, headers)
                self.whole[event.stream_id] = not r.trailers
                return  # HttpStream.send_response sends the body right after, in the same step
        elif isinstance(event, ResponseData) and event.stream_id in self.whole:
            end = self.whole.pop(event.stream_id)
            if self.is_open_for_us(event.stream_id):
                small = len(event.data) <= self.h2_conn.max_outbound_frame_size  # else split, unended
                self.h2_conn.send_data(event.stream_id, event.data, end_stream=end and small)
                if end and not small:
                    self.h2_conn.end_stream(event.stream_id)
                if end:
                    self.ended.add(event.stream_id)
            if data := self.h2_conn.data_to_send():
                yield commands.SendData(self.conn, data)
            return
        elif isinstance(event, ResponseEndOfMessage) and event.stream_id in self.ended:
            self.ended.discard(event.stream_id)
            if data := self.h2_conn.data_to_send():
                yield commands.SendData(self.conn, data)
            return
        elif isinstance(event, ResponseProtocolError):
            self.whole.pop(event.stream_id, None)
            self.ended.discard(event.stream_id)
        yield from super()._handle_event(event)


class GuardedHttp2Server(WholeResponseHttp2Server):
    limits: Limits
    layer: HttpLayer
    resets: ResetWindow

    def _handle_event(self, event):
        if isinstance(event, StopReading):
            if not self.is_closed(event.stream_id):
                self.h2_conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                yield commands.SendData(self.conn, self.h2_conn.data_to_send())
            self.streams.pop(event.stream_id, None)
            return
        if isinstance(event, ResponseProtocolError) and (status := event.code.http_status_code()) is not None \
                and self.is_open_for_us(event.stream_id) \
                and not self.h2_conn.streams[event.stream_id].state_machine.headers_sent:
            self._answer(event.stream_id, refusal(event, status))
            yield commands.SendData(self.conn, self.h2_conn.data_to_send())
            return
        yield from super()._handle_event(event)

    def _answer(self, stream_id: int, answer) -> None:
        del answer.headers["connection"]  # connection-specific: not in HTTP/2
        status = b"%d" % answer.status_code
        self.h2_conn.send_headers(stream_id, [(b":status", status), *answer.headers.fields])
        self.h2_conn.send_data(stream_id, answer.content, end_stream=True)

    def _refuse_head(self, event: h2.events.RequestReceived, message: str):
        """A request whose pseudo-header fields mitmproxy cannot parse (an :authority that is not
        a host, a missing :path) gets the JSON 400 on its stream (RFC 9113 §8.1.1 lets an
        intermediary answer a malformed request), where mitmproxy would end the whole connection
        with a GOAWAY carrying its own words; the library's message stays in the log."""
        log.info(f"refused an HTTP/2 request mitmproxy could not take (400): {shown(message)}")
        if "pseudo header" in message:
            error, reason = "bad_request", "pseudo-header fields missing or unknown (RFC 9113 §8.3)"
        else:
            error, reason = "invalid_host", "the :authority is not a host and port (RFC 9110 §7.2)"
        # the frames after the head came in the same read and are already applied to the stream:
        # the client may have reset it (nothing to answer), or ended it (nothing left to stop)
        if self.is_open_for_us(event.stream_id):
            self._answer(event.stream_id, replies.without_flow(400, error, reason))
        stream = self.h2_conn.streams.get(event.stream_id)
        if stream is not None and not stream.closed:  # the client need not send the rest
            self.h2_conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        yield commands.SendData(self.conn, self.h2_conn.data_to_send())

    def handle_h2_event(self, event):
        if isinstance(event, h2.events.RequestReceived):
            try:  # parsed again by mitmproxy right after; a few microseconds
                parse_h2_request_headers(event.headers)
            except ValueError as e:
                yield from self._refuse_head(event, str(e))
                return False
        # every reset counts: mitmproxy itself forgets a stream whose HEADERS(END_STREAM) and
        # RST_STREAM came in one read, and would go on to forward its request
        if isinstance(event, h2.events.StreamReset) and event.remote_reset:
            self._abandoned(event.stream_id)
            if self.resets.hit(time.monotonic()):
                yield from self._goaway(f"more than {self.limits.max_resets} stream resets within "
                                        f"{self.limits.reset_window:g}s (rapid reset, CVE-2023-44487)")
                return True
        return (yield from super().handle_h2_event(event))

    def _goaway(self, message: str):
        """GOAWAY ENHANCE_YOUR_CALM and a half-close now; nothing more is read. The full close (and
        failing the open streams) waits for the client's close or LINGER: mitmproxy's protocol_error
        closes from inside the read that caused it, which with the hooks of a hundred streams in
        flight left connections hanging, never closed."""
        yield commands.Log(f"{self.conn.peername[0]}:{self.conn.peername[1]}: {message}", logging.INFO)
        self.h2_conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, message.encode())
        yield commands.SendData(self.conn, self.h2_conn.data_to_send())
        yield commands.CloseTcpConnection(self.conn, half_close=True)
        self._closing = message
        self._handle_event = self._after_goaway
        yield commands.RequestWakeup(LINGER)

    def _after_goaway(self, event):
        if isinstance(event, (events.Wakeup, events.ConnectionClosed)):
            yield from self.close_connection(self._closing)  # mitmproxy's: close, fail the open streams
        # anything else (frames, answers of streams) is dropped

    def _abandoned(self, stream_id: int) -> None:
        """A stream the client reset before its request was complete: no addon acts on it any more
        (its hooks return early on a killed flow), so it is neither counted nor forwarded."""
        stream = self.layer.streams.get(stream_id)
        flow = getattr(stream, "flow", None)
        if flow is not None and flow.killable and stream.client_state != stream.state_done:
            flow.kill()


class GuardedHttpLayer(HttpLayer):
    limits: Limits

    def _handle_event(self, event):
        if isinstance(event, events.Start) and self.context.client not in self.connections:
            alpn = self.context.client.alpn
            if alpn == b"h2":
                conn = GuardedHttp2Server(self.context.fork())
                conn.layer = self
                conn.resets = ResetWindow(self.limits.max_resets, self.limits.reset_window)
            elif alpn is None or not alpn.startswith(b"h3"):
                conn = (FastHttp1Server if self.limits.fast else GuardedHttp1Server)(self.context.fork())
            else:
                conn = None
            if conn is not None:
                conn.limits = self.limits
                self.connections[self.context.client] = conn  # mitmproxy's Start uses it (setdefault)
        yield from super()._handle_event(event)

    def make_stream(self, stream_id: int):
        self.streams[stream_id] = stream = GuardedStream(self.context.fork(), stream_id)
        yield from self.event_to_child(stream, events.Start())

