"""Single-node (N=1) behaviour of the dkv HTTP API, as specified in API.md.

Most tests share one node per module and use keys unique to the test (`uniq`); tests that need an
empty store, special flags, or restarts start their own node. Section numbers refer to API.md.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import dkvharness as h
from dkvharness import KIB, MIB, entity_target, entities_target, http_request, pct

DEFAULT_MAX_BODY_BYTES = 1 * MIB


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (prefix ends < 0xFF)."""
    assert prefix and prefix[-1] != 0xFF
    return prefix[:-1] + bytes([prefix[-1] + 1])


def range_records(node: h.Node, start: bytes, end: bytes | None = None, *params: str):
    """GET /v0/entities over a raw socket; returns (response, [(key, value)]) with exact framing."""
    with node.raw() as c:
        r = c.request("GET", entities_target(start, end, *params))
    assert r.status == 200, r
    if r.chunks is None:  # an empty result MAY use Content-Length: 0
        assert r.body == b"", "non-chunked range response with a body: %r" % r.body[:200]
        return r, []
    return r, h.parse_records(r.chunks)


def send_body_watching_response(c: h.RawConn, head: bytes, body: bytes, piece: int = 64 * KIB):
    """Sends a request head then its body piece by piece, stopping early if the server answers
    (or closes) first, as a server rejecting an oversized body may do. Returns the response."""
    try:
        c.send(head)
        for i in range(0, len(body), piece):
            r, _, _ = select.select([c.sock], [], [], 0)
            if r:
                break
            c.send(body[i: i + piece])
    except (BrokenPipeError, ConnectionResetError):
        pass
    return c.read_response()


def assert_closed_only_if_announced(c: h.RawConn, r: h.RawResponse):
    """§2: after a 4xx the node MAY close, but only if the response said Connection: close."""
    if r.closes:
        assert c.wait_closed(5.0) == b""
        return
    try:
        r2 = c.request("GET", "/v0/status")
    except (EOFError, ConnectionResetError, BrokenPipeError, h.FramingError) as e:
        raise AssertionError("connection closed after %d without Connection: close (%r)"
                             % (r.status, e))
    assert r2.status == 200


def assert_status_ok(node: h.Node):
    """A brand-new connection is served: the node is alive and accepting."""
    with node.client() as c:
        assert c.status().status == 200


# =================================================================================================
# §3 Endpoints: basic CRUD
# =================================================================================================


def test_status_answers_200(client):
    r = client.status()
    assert r.status == 200


def test_put_get_delete_get_cycle(client, uniq):
    k = uniq()
    assert client.put(k, b"hello").status == 201
    r = client.get(k)
    assert (r.status, r.body) == (200, b"hello")
    assert client.delete(k).status == 202
    assert client.get(k).status == 404


def test_get_of_never_written_key_is_404(client, uniq):
    assert client.get(uniq()).status == 404


def test_empty_value_is_200_with_empty_body_not_404(client, uniq):
    k = uniq()
    assert client.put(k, b"").status == 201
    r = client.get(k)
    assert r.status == 200
    assert r.body == b""


def test_put_overwrites_existing_value(client, uniq):
    k = uniq()
    assert client.put(k, b"first value, longer").status == 201
    assert client.put(k, b"second").status == 201
    r = client.get(k)
    assert (r.status, r.body) == (200, b"second")


def test_delete_of_absent_key_is_202(client, uniq):
    k = uniq()
    assert client.delete(k).status == 202
    assert client.get(k).status == 404


def test_put_after_delete_recreates_key(client, uniq):
    k = uniq()
    assert client.put(k, b"v1").status == 201
    assert client.delete(k).status == 202
    assert client.put(k, b"v2").status == 201
    r = client.get(k)
    assert (r.status, r.body) == (200, b"v2")


def test_back_to_back_writes_through_one_node_are_ordered_as_sent(client, uniq):
    # §6: timestamps strictly increase per coordinator. Later values sort *greater* here, so a
    # coarse clock (equal timestamps, smaller value wins) would return an older value.
    k = uniq()
    for i in range(200):
        assert client.put(k, b"v%06d" % i).status == 201
    assert client.get(k).body == b"v000199"
    # Equal timestamps would also let a tombstone beat the value written right after it.
    for i in range(50):
        assert client.delete(k).status == 202
        assert client.put(k, b"%d" % i).status == 201
        r = client.get(k)
        assert (r.status, r.body) == (200, b"%d" % i)


# =================================================================================================
# §2.1, §4 Query parameters and validation
# =================================================================================================

MISSING_ID_QUERIES = [
    "",  # no query at all
    "?",  # bare ?
    "?ack=1&from=1",  # no id
    "?id=",  # empty id
    "?id",  # id without '=' (empty)
    "?xid=k",  # whole-name match only
    "?idx=k",
    "?foo=id%3Dk",
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("query", MISSING_ID_QUERIES)
def test_missing_or_empty_id_is_400(client, method, query):
    body = b"v" if method == "PUT" else None
    r = client.request(method, "/v0/entity" + query, body=body)
    assert r.status == 400, (method, query, r)


def test_put_with_xid_stores_nothing_under_k(client, uniq):
    k = uniq()
    assert client.request("PUT", "/v0/entity?xid=" + pct(k), body=b"v").status == 400
    assert client.get(k).status == 404


BAD_REPLICATION_PARAMS = [
    "ack=abc",
    "from=xyz",
    "ack=0",
    "from=0",
    "from=2",  # from > N = 1
    "ack=2",  # ack > from (from defaults to N = 1)
    "ack=2&from=1",
    "ack=1&from=2",
    "ack=-1",
    "from=-1",
    "ack=1.0",
    "ack=1x",
    "ack=",
    "from=",
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("params", BAD_REPLICATION_PARAMS)
def test_invalid_ack_or_from_is_400_and_has_no_effect(client, uniq, method, params):
    k = uniq()
    if method == "DELETE":
        assert client.put(k, b"keep").status == 201
    body = b"new" if method == "PUT" else None
    r = client.request(method, entity_target(k, params), body=body)
    assert r.status == 400, (method, params, r)
    # §4: a rejected request has no effect on stored data.
    after = client.get(k)
    if method == "DELETE":
        assert (after.status, after.body) == (200, b"keep")
    else:
        assert after.status == 404


@pytest.mark.parametrize(
    "layout",
    [
        "id={id}&ack=1&from=1",
        "id={id}&from=1&ack=1",
        "ack=1&from=1&id={id}",
        "from=1&id={id}&ack=1",
        "id={id}&ack=1",
        "id={id}&from=1",
    ],
)
def test_valid_ack_and_from_are_accepted_in_any_order(client, uniq, layout):
    k = uniq()
    target = "/v0/entity?" + layout.format(id=pct(k))
    assert client.request("PUT", target, body=b"val").status == 201
    r = client.request("GET", target)
    assert (r.status, r.body) == (200, b"val")
    assert client.request("DELETE", target).status == 202
    assert client.request("GET", target).status == 404


@pytest.mark.parametrize(
    "layout",
    [
        "id={id}&foo=bar",
        "foo=bar&id={id}&baz",
        "id={id}&&",
        "id={id}&ack_extra=5&xfrom=9",
        "id={id}&=nothing",
    ],
)
def test_unknown_query_parameters_are_ignored(client, uniq, layout):
    k = uniq()
    target = "/v0/entity?" + layout.format(id=pct(k))
    assert client.request("PUT", target, body=b"x").status == 201
    r = client.request("GET", target)
    assert (r.status, r.body) == (200, b"x")
    assert client.request("DELETE", target).status == 202


def test_query_starts_at_the_first_question_mark(client, uniq):
    p = uniq()
    assert client.request("PUT", "/v0/entity?id=" + pct(p) + "a?b", body=b"q").status == 201
    r = client.get(p + b"a?b")
    assert (r.status, r.body) == (200, b"q")


def test_percent_encoded_and_plain_id_name_the_same_key(client, uniq):
    p = uniq()
    assert client.request("PUT", "/v0/entity?id=" + pct(p) + "%41bc", body=b"one").status == 201
    r = client.request("GET", "/v0/entity?id=" + pct(p) + "Abc")
    assert (r.status, r.body) == (200, b"one")
    # Hex digits in either case.
    assert client.request("PUT", "/v0/entity?id=" + pct(p) + "%4a%4B", body=b"two").status == 201
    r = client.get(p + b"JK")
    assert (r.status, r.body) == (200, b"two")


def test_encoded_ampersand_and_equals_are_part_of_the_key(client, uniq):
    p = uniq()
    assert client.request("PUT", "/v0/entity?id=" + pct(p) + "a%26b%3Dc", body=b"amp").status \
        == 201
    r = client.get(p + b"a&b=c")
    assert (r.status, r.body) == (200, b"amp")
    # Unencoded, the same characters split the query: the key is just `<p>a`.
    assert client.request("GET", "/v0/entity?id=" + pct(p) + "a&b=c").status == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("bad", ["%zz", "%4", "ab%", "%g1", "a%%41", "%", "%-1"])
def test_invalid_percent_escape_in_id_is_400(client, method, bad):
    body = b"v" if method == "PUT" else None
    r = client.request(method, "/v0/entity?id=" + bad, body=body)
    assert r.status == 400, (method, bad, r)


@pytest.mark.parametrize("query", ["start=%zz", "start=%4", "start=a&end=%4", "start=a&end=%xy"])
def test_invalid_percent_escape_in_range_bounds_is_400(client, query):
    assert client.request("GET", "/v0/entities?" + query).status == 400


# =================================================================================================
# §3 Methods and paths
# =================================================================================================


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_unsupported_method_on_entity_is_405_and_stores_nothing(client, uniq, method):
    k = uniq()
    r = client.request(method, entity_target(k), body=b"sneaky")
    assert r.status == 405, r
    assert client.get(k).status == 404


@pytest.mark.parametrize("method", ["POST", "PATCH", "OPTIONS"])
def test_method_check_comes_before_id_validation(client, method):
    body = b"x" if method != "OPTIONS" else None
    assert client.request(method, "/v0/entity", body=body).status == 405
    assert client.request(method, "/v0/entity?id=", body=body).status == 405


def test_unsupported_method_does_not_touch_existing_value(client, uniq):
    k = uniq()
    assert client.put(k, b"orig").status == 201
    assert client.request("POST", entity_target(k), body=b"other").status == 405
    assert client.request("PATCH", entity_target(k), body=b"other").status == 405
    r = client.get(k)
    assert (r.status, r.body) == (200, b"orig")


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_non_get_method_on_entities_is_405(client, method):
    body = b"x" if method in ("PUT", "POST", "PATCH") else None
    r = client.request(method, "/v0/entities?start=a", body=body)
    assert r.status == 405, r


@pytest.mark.parametrize(
    "method,target",
    [
        ("GET", "/abracadabra"),
        ("GET", "//"),
        ("GET", "/v0"),
        ("GET", "/v0/"),
        ("GET", "/v0/entity/?id=k"),
        ("GET", "/v0/entityx?id=k"),
        ("GET", "/v0/Entity?id=k"),
        ("GET", "/v1/entity?id=k"),
        ("GET", "/v0/status/"),
        ("GET", "/v0/statusx"),
        ("GET", "/v0/entities/?start=a"),
        ("GET", "//v0/entity?id=k"),
        ("PUT", "/abracadabra?id=k"),
        ("POST", "/abracadabra"),
        ("DELETE", "/v0/stat"),
    ],
)
def test_unknown_path_is_400_not_404(client, method, target):
    body = b"x" if method in ("PUT", "POST") else None
    r = client.request(method, target, body=body)
    assert r.status == 400, (method, target, r)


def test_status_ignores_a_query_string(client):
    assert client.request("GET", "/v0/status?verbose=1").status == 200


# =================================================================================================
# §10 Node-local range
# =================================================================================================


@pytest.mark.parametrize(
    "target",
    [
        "/v0/entities",
        "/v0/entities?",
        "/v0/entities?end=x",
        "/v0/entities?start=",
        "/v0/entities?start=&end=",
        "/v0/entities?start=&end=zz",
        "/v0/entities?xstart=a",
    ],
)
def test_range_without_start_is_400(client, target):
    r = client.request("GET", target)
    assert r.status == 400, (target, r)


def test_range_sends_exactly_one_chunk_per_record(node, client, uniq):
    # The spec example: a->x, bb->"", c->yz (under a prefix unique to this test).
    p = uniq(b"/")
    recs = [(p + b"a", b"x"), (p + b"bb", b""), (p + b"c", b"yz")]
    for k, v in reversed(recs):
        assert client.put(k, v).status == 201
    with node.raw() as c:
        r = c.request("GET", entities_target(p, prefix_end(p)))
    assert r.status == 200
    assert r.header("transfer-encoding", "").lower() == "chunked"
    assert r.header("content-length") is None
    assert r.chunks == [k + b"\n" + v for k, v in recs]


def test_range_value_bytes_may_contain_newlines_and_crlf(node, client, uniq):
    p = uniq(b"/")
    recs = [
        (p + b"1", b"x\ny\r\n0\r\n\r\n"),
        (p + b"2", b"\n"),
        (p + b"3", b"\r\n\r\n"),
        (p + b"4", bytes(range(256))),
    ]
    for k, v in recs:
        assert client.put(k, v).status == 201
    _, got = range_records(node, p, prefix_end(p))
    assert got == recs


def test_range_orders_keys_as_unsigned_bytes_with_prefix_first(node, client, uniq):
    p = uniq(b"/")
    suffixes = [b"a", b"a\x00", b"a\x01", b"ab", b"b", b"\x00", b"\x01", b"\x7f", b"\x80",
                b"\xff", b"\xff\xff", b"A", b"Z", b"z", b"0", b"\xc3\xa9", b"a\xff", b"aa"]
    rng = random.Random(7)
    shuffled = suffixes[:]
    rng.shuffle(shuffled)
    for s in shuffled:
        assert client.put(p + s, b"v:" + s).status == 201
    _, got = range_records(node, p, prefix_end(p))
    want = sorted((p + s, b"v:" + s) for s in suffixes)
    assert got == want


def test_range_start_is_inclusive_and_end_is_exclusive(node, client, uniq):
    p = uniq(b"/")
    for s in [b"k1", b"k2", b"k3", b"k4", b"k5"]:
        assert client.put(p + s, s).status == 201
    _, got = range_records(node, p + b"k2", p + b"k4")
    assert [k for k, _ in got] == [p + b"k2", p + b"k3"]
    # Bounds between keys.
    _, got = range_records(node, p + b"k1\x00", p + b"k3\x00")
    assert [k for k, _ in got] == [p + b"k2", p + b"k3"]
    # end == start and end < start select nothing, still 200.
    assert range_records(node, p + b"k2", p + b"k2")[1] == []
    assert range_records(node, p + b"k4", p + b"k2")[1] == []
    # Without end: everything from start on, including keys after the prefix.
    _, got = range_records(node, p + b"k4")
    assert [k for k, _ in got[:2]] == [p + b"k4", p + b"k5"]


def test_range_skips_tombstones_and_shows_only_the_newest_value(node, client, uniq):
    p = uniq(b"/")
    assert client.put(p + b"a", b"1").status == 201
    assert client.put(p + b"b", b"2").status == 201
    assert client.put(p + b"c", b"3").status == 201
    assert client.delete(p + b"b").status == 202
    assert client.delete(p + b"never").status == 202
    assert client.put(p + b"c", b"33").status == 201
    _, got = range_records(node, p, prefix_end(p))
    assert got == [(p + b"a", b"1"), (p + b"c", b"33")]


def test_range_ignores_ack_and_from(node, client, uniq):
    p = uniq(b"/")
    assert client.put(p + b"a", b"1").status == 201
    _, got = range_records(node, p, prefix_end(p), "ack=5", "from=9")
    assert got == [(p + b"a", b"1")]


def test_range_with_no_matching_keys_is_200_and_empty(node, client, uniq):
    p = uniq(b"/")
    r, got = range_records(node, p, prefix_end(p))
    assert got == []
    assert r.body == b""


def test_range_on_an_empty_node_is_200_and_empty(fresh_node):
    r, got = range_records(fresh_node, b"\x01")
    assert got == []


def test_range_bounds_are_percent_decoded(node, client, uniq):
    p = uniq(b"/")
    assert client.put(p + b"a&b", b"1").status == 201
    assert client.put(p + b"c", b"2").status == 201
    # start/end given with mixed literal and %XX escapes.
    with node.raw() as c:
        r = c.request("GET", "/v0/entities?start=" + pct(p) + "%61&end=" + pct(p) + "%63")
    assert r.status == 200
    assert h.parse_records(r.chunks or []) == [(p + b"a&b", b"1")]


# =================================================================================================
# §11 Keys and values
# =================================================================================================


def test_every_byte_0x01_to_0xff_works_in_keys(node, client, uniq):
    p = uniq(b"/")
    keys = [p + bytes([b]) for b in range(1, 256)]
    keys.append(bytes(range(1, 256)))  # one key with every byte
    keys.append(bytes([0xFF]))  # whole key is a single non-ASCII byte
    for i, k in enumerate(keys):
        assert client.put(k, b"%d" % i).status == 201, k
    for i, k in enumerate(keys):
        r = client.get(k)
        assert (r.status, r.body) == (200, b"%d" % i), k
    # The range shows the same bytes back, one chunk per record.
    with node.raw() as c:
        r = c.request("GET", entities_target(p, prefix_end(p)))
    assert r.status == 200
    assert r.chunks == [k + b"\n" + b"%d" % i
                        for k, i in sorted((k, i) for i, k in enumerate(keys) if k.startswith(p))]
    for k in keys:
        assert client.delete(k).status == 202
        assert client.get(k).status == 404


def test_nul_byte_works_in_keys(client, uniq):
    p = uniq(b"/")
    for k in [b"\x00", p + b"\x00", p + b"a\x00b", p + b"\x00\x00", bytes(range(256))]:
        assert client.put(k, b"nul:" + k).status == 201, k
        r = client.get(k)
        assert (r.status, r.body) == (200, b"nul:" + k), k
    # Keys differing only after a NUL stay distinct.
    assert client.get(p + b"a\x00c").status == 404
    assert client.get(p + b"a").status == 404


@pytest.mark.parametrize(
    "value",
    [
        b"\x00",
        b"\x00\x00\x00abc\x00",
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"0\r\n\r\n",
        bytes(range(256)) * 4,
    ],
    ids=["nul", "nuls", "cr", "lf", "crlf", "crlfcrlf", "http", "lastchunk", "allbytes"],
)
def test_binary_values_round_trip_exactly(client, uniq, value):
    k = uniq()
    assert client.put(k, value).status == 201
    r = client.get(k)
    assert (r.status, r.body) == (200, value)


def test_1kib_keys_work(client, uniq):
    rng = random.Random(1)
    for n in (1023, 1024):
        k = bytes(rng.randrange(256) for _ in range(n))
        assert client.put(k, b"long key %d" % n).status == 201
        r = client.get(k)
        assert (r.status, r.body) == (200, b"long key %d" % n)
        # A key one byte shorter is a different key.
        assert client.get(k[:-1]).status == 404
        assert client.delete(k).status == 202
        assert client.get(k).status == 404


def test_8kib_request_head_with_1kib_key_is_accepted(node, uniq):
    k = (uniq(b"/") + b"\xfe" * 1024)[:1024]
    target = entity_target(k)
    pad = "p" * (8 * KIB - len(target) - 200)
    with node.raw() as c:
        r = c.request("PUT", target, b"big head", headers=[("X-Pad", pad)])
        assert r.status == 201
        head = http_request("GET", target, headers=[("X-Pad", pad)])
        assert 7 * KIB < len(head) <= 8 * KIB
        c.send(head)
        r = c.read_response()
        assert (r.status, r.body) == (200, b"big head")


def test_1mib_value_round_trips(client, uniq):
    k = uniq()
    value = os.urandom(DEFAULT_MAX_BODY_BYTES)
    assert client.put(k, value).status == 201
    r = client.get(k)
    assert r.status == 200
    assert len(r.body) == len(value)
    assert r.body == value


def test_body_over_1mib_is_413_and_node_keeps_serving(node, uniq):
    k = uniq()
    body = b"x" * (DEFAULT_MAX_BODY_BYTES + 1)
    head = http_request("PUT", entity_target(k), body)[: -len(body)]
    with node.raw() as c:
        r = send_body_watching_response(c, head, body)
        assert r.status == 413
        assert_closed_only_if_announced(c, r)
    with node.client() as c2:
        assert c2.status().status == 200
        assert c2.get(k).status == 404


def test_max_body_bytes_flag_is_enforced_for_length_and_chunked_bodies(node_factory):
    nd = node_factory("--max-body-bytes", "1000")
    with nd.client() as c:
        assert c.put(b"exact", b"e" * 1000).status == 201
        assert c.get(b"exact").body == b"e" * 1000
    with nd.raw() as c:
        r = c.request("PUT", entity_target(b"over"), b"o" * 1001)
        assert r.status == 413
    with nd.raw() as c:
        c.send(http_request("PUT", entity_target(b"chunked-over"), chunks=[b"a" * 600, b"b" * 401]))
        assert c.read_response().status == 413
    with nd.raw() as c:
        c.send(http_request("PUT", entity_target(b"chunked-ok"), chunks=[b"a" * 600, b"b" * 400]))
        assert c.read_response().status == 201
    with nd.client() as c:
        assert c.get(b"over").status == 404
        assert c.get(b"chunked-over").status == 404
        assert c.get(b"chunked-ok").body == b"a" * 600 + b"b" * 400


def test_request_head_over_16kib_is_431_and_node_keeps_serving(node):
    pad = "q" * (20 * KIB)
    with node.raw() as c:
        try:
            c.send(http_request("GET", "/v0/status", headers=[("X-Pad", pad)]))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.read_response()
        assert r.status == 431
        assert_closed_only_if_announced(c, r)
    # Also with an oversized request line.
    with node.raw() as c:
        try:
            c.send(http_request("GET", "/v0/entity?id=" + "k" * (20 * KIB)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.read_response()
    assert r.status in (414, 431)
    assert_status_ok(node)


GARBAGE = [
    b"this is not http\r\n\r\n",
    b"GET\x01\x02\x03 / HTTP/1.1\r\n\r\n",
    b"GET /v0/status HTTX/1.1\r\nHost: x\r\n\r\n",
    b"GET /v0/status HTTP/1.1\r\nHeader without colon\r\n\r\n",
    b"PUT /v0/entity?id=k HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"PUT /v0/entity?id=k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x00\x01\x02\x03\x04\x05\x06\x07\r\n\r\n",
    b"GET /v0/status HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=[str(i) for i in range(len(GARBAGE))])
def test_malformed_request_gets_400_and_connection_closed(node, garbage):
    with node.raw() as c:
        c.send(garbage)
        r = c.read_response()
        assert r.status == 400, r
        assert r.closes, "a 400 that closes the connection must say Connection: close"
        rest = c.wait_closed(5.0)
        assert rest == b"", "bytes after the 400: %r" % rest[:200]
    assert_status_ok(node)


def test_chunked_request_body_is_stored_exactly(node, uniq):
    k = uniq()
    parts = [b"hello ", b"\r\n", b"x" * 70000, b"\x00", b"0\r\n\r\n", b"end"]
    with node.raw() as c:
        r = c.request("PUT", entity_target(k), chunks=parts)
        assert r.status == 201
        # Uppercase hex sizes, a chunk extension and a trailer are valid HTTP/1.1 too.
        raw = (http_request("PUT", entity_target(k + b"2"), headers=[("Transfer-Encoding",
                                                                          "chunked")])
               .replace(b"Content-Length: 0\r\n", b"")
               + b"1A;ext=1\r\n" + b"z" * 26 + b"\r\n" + b"0\r\nX-Trailer: t\r\n\r\n")
        c.send(raw)
        assert c.read_response().status == 201
        r = c.request("GET", entity_target(k))
        assert (r.status, r.body) == (200, b"".join(parts))
        r = c.request("GET", entity_target(k + b"2"))
        assert (r.status, r.body) == (200, b"z" * 26)


def test_put_with_expect_100_continue_is_stored(node, uniq):
    k = uniq()
    body = os.urandom(200 * KIB)
    head = http_request("PUT", entity_target(k), body, headers=[("Expect", "100-continue")])
    head = head[: -len(body)]
    with node.raw() as c:
        c.send(head)
        r, _, _ = select.select([c.sock], [], [], 2.0)
        if r:  # the server SHOULD answer 100 Continue before we send the body
            interim = c.read_response()
            assert interim.status == 100, interim
        c.send(body)
        final = c.read_final_response()
        assert final.status == 201
        r2 = c.request("GET", entity_target(k))
        assert (r2.status, r2.body) == (200, body)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_request_body_on_get_or_delete_is_skipped_keeping_the_connection_in_sync(node, uniq,
                                                                                method):
    k = uniq()
    with node.raw() as c:
        assert c.request("PUT", entity_target(k), b"v").status == 201
        # The body looks like a request; the node must consume it as a body, not parse it.
        sneaky = http_request("DELETE", entity_target(k))
        r = c.request(method, entity_target(k), sneaky)
        assert r.status == (200 if method == "GET" else 202)
        r = c.request("GET", entity_target(k))
        assert r.status == (200 if method == "GET" else 404)
        chunked = http_request(method, entity_target(k), chunks=[b"abc", b"\r\n\r\n"])
        c.send(chunked)
        assert c.read_response().status in (200, 202, 404)
        assert c.request("GET", "/v0/status").status == 200


# =================================================================================================
# §2 Connections: keep-alive, pipelining, errors
# =================================================================================================


def test_keep_alive_connection_serves_many_requests(node, uniq):
    p = uniq(b"/")
    with node.raw() as c:
        for i in range(300):
            k = p + b"%d" % (i % 10)
            v = b"value %d " % i * (i % 7)
            r = c.request("PUT", entity_target(k), v)
            assert r.status == 201 and not r.closes
            r = c.request("GET", entity_target(k))
            assert (r.status, r.body) == (200, v) and not r.closes
        r = c.request("GET", "/v0/status")
        assert r.status == 200
        assert c.is_open_now()


def test_client_connection_close_is_honoured(node):
    with node.raw() as c:
        r = c.request("GET", "/v0/status", headers=[("Connection", "close")])
        assert r.status == 200
        assert c.wait_closed(5.0) == b""


def test_error_responses_are_framed_and_keep_the_connection_usable(node, uniq):
    k = uniq()
    bad = [
        ("GET", "/v0/entity", None, 400),
        ("GET", "/abracadabra", None, 400),
        ("POST", entity_target(k), b"x", 405),
        ("GET", entity_target(k, "ack=0"), None, 400),
        ("GET", entity_target(k), None, 404),
        ("PUT", "/v0/entities?start=a", b"x", 405),
    ]
    c = node.raw()
    try:
        for method, target, body, want in bad:
            r = c.request(method, target, body)  # RawConn insists on CL/chunked framing
            assert r.status == want, (method, target, r)
            if r.closes:  # §2: MAY close after a 4xx that says so
                assert c.wait_closed(5.0) == b""
                c.close()
                c = node.raw()
                continue
            r = c.request("GET", "/v0/status")
            assert r.status == 200, "connection unusable after %d %s %s" % (want, method, target)
    finally:
        c.close()


def test_pipelined_requests_are_answered_in_order(node, uniq):
    rng = random.Random(50)
    keys = [uniq(b"%d" % i) for i in range(5)]
    model: dict[bytes, bytes] = {}
    reqs, expect = [], []
    for i in range(50):
        k = rng.choice(keys)
        op = rng.choice(["PUT", "PUT", "GET", "GET", "DELETE"]) if i else "GET"
        if op == "PUT":
            v = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 100, 3000])))
            reqs.append(http_request("PUT", entity_target(k), v))
            model[k] = v
            expect.append((201, None))
        elif op == "GET":
            reqs.append(http_request("GET", entity_target(k)))
            expect.append((200, model[k]) if k in model else (404, None))
        else:
            reqs.append(http_request("DELETE", entity_target(k)))
            model.pop(k, None)
            expect.append((202, None))
    with node.raw() as c:
        c.send(b"".join(reqs))  # one write
        for i, (status, body) in enumerate(expect):
            r = c.read_response()
            assert r.status == status, "response %d: %r" % (i, r)
            if body is not None:
                assert r.body == body, "response %d body" % i
        assert c.is_open_now()


def test_pipelined_put_then_get_reads_the_write(node, uniq):
    """A PUT and a GET of the same key in one send are served in one loop iteration, while the
    PUT's record may still wait in the I/O thread's write batch: the GET must see it. Same for a
    DELETE, a PUT over a PUT, and a range read."""
    k = uniq()
    with node.raw() as c:
        for i in range(20):
            v = b"value-%d" % i
            c.send(http_request("PUT", entity_target(k), v) + http_request("GET", entity_target(k)))
            assert c.read_response().status == 201
            r = c.read_response()
            assert (r.status, r.body) == (200, v), "round %d: %r" % (i, r)
        c.send(http_request("PUT", entity_target(k), b"a") + http_request("PUT", entity_target(k), b"b")
               + http_request("GET", entity_target(k)) + http_request("DELETE", entity_target(k))
               + http_request("GET", entity_target(k))
               + http_request("PUT", entity_target(k), b"c")
               + http_request("GET", entities_target(k, k + b"\x00")))
        assert [c.read_response().status for _ in range(2)] == [201, 201]
        r = c.read_response()
        assert (r.status, r.body) == (200, b"b"), r
        assert c.read_response().status == 202
        assert c.read_response().status == 404
        assert c.read_response().status == 201
        r = c.read_response()
        assert r.status == 200 and h.parse_records(r.chunks) == [(k, b"c")], r


def test_64_concurrent_keep_alive_connections_do_not_interfere(node, uniq):
    n_conns, rounds = 64, 15
    barrier = threading.Barrier(n_conns, timeout=30)
    prefixes = [uniq(b"t%d/" % t) for t in range(n_conns)]

    def worker(t: int):
        rng = random.Random(t)
        with node.client() as c:
            assert c.status().status == 200  # connection open before everyone starts
            barrier.wait()
            for i in range(rounds):
                k = prefixes[t] + b"%d" % (i % 4)
                v = b"%d:%d:" % (t, i) + rng.randbytes(rng.randrange(2000))
                r = c.put(k, v)
                assert r.status == 201, (t, i, r.status)
                r = c.get(k)
                assert (r.status, r.body) == (200, v), (t, i, r.status)
                if i % 5 == 4:
                    assert c.delete(k).status == 202
                    assert c.get(k).status == 404
        return t

    with ThreadPoolExecutor(max_workers=n_conns) as ex:
        futs = [ex.submit(worker, t) for t in range(n_conns)]
        dl = h.Deadline(45)
        for f in futs:
            f.result(timeout=dl.remaining())


def test_concurrent_writes_to_one_key_never_mix_values(node, client, uniq):
    k = uniq()
    values = [bytes([0x41 + i]) * (64 * KIB) + b"#%d" % i for i in range(8)]
    valid = set(values)
    assert client.put(k, values[0]).status == 201
    stop = threading.Event()
    bad: list = []

    def writer(t: int):
        rng = random.Random(t)
        with node.client() as c:
            for _ in range(15):
                assert c.put(k, rng.choice(values)).status == 201

    def reader():
        n = 0
        with node.client() as c:
            while not stop.is_set() or n < 5:
                r = c.get(k)
                n += 1
                if r.status != 200 or r.body not in valid:
                    bad.append((r.status, len(r.body), r.body[:20], r.body[-20:]))
        return n

    with ThreadPoolExecutor(max_workers=9) as ex:
        readers = [ex.submit(reader) for _ in range(3)]
        writers = [ex.submit(writer, t) for t in range(6)]
        dl = h.Deadline(45)
        try:
            for f in writers:
                f.result(timeout=dl.remaining())
        finally:
            stop.set()
        for f in readers:
            f.result(timeout=dl.remaining())
    assert bad == []
    r = client.get(k)
    assert r.status == 200 and r.body in valid


# =================================================================================================
# Connection timeouts
# =================================================================================================


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(node_factory):
    nd = node_factory("--idle-timeout-ms", "300")
    with nd.raw() as c:
        assert c.request("GET", "/v0/status").status == 200
        t0 = time.monotonic()
        assert c.wait_closed(10.0) == b""
        elapsed = time.monotonic() - t0
    assert elapsed >= 0.15, "closed after only %.3fs of a 300 ms idle timeout" % elapsed
    assert_status_ok(nd)


def test_connection_that_never_sends_is_closed_after_idle_timeout(node_factory):
    nd = node_factory("--idle-timeout-ms", "300")
    with nd.raw() as c:
        assert c.wait_closed(10.0) == b""
    assert_status_ok(nd)


def test_slowloris_request_is_closed_after_request_timeout(node_factory):
    # Bytes keep arriving (so the connection is never idle), but the request never completes.
    nd = node_factory("--request-timeout-ms", "500")
    start = b"GET /v0/status HTTP/1.1\r\nHost: x\r\nX-Slow: "
    dl = h.Deadline(10.0)
    t0 = time.monotonic()
    closed = False
    got = b""
    with nd.raw() as c:
        i = 0
        while not dl.expired():
            byte = start[i: i + 1] or b"a"
            i += 1
            try:
                c.sock.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            r, _, _ = select.select([c.sock], [], [], 0.05)
            if r:
                try:
                    got = c.wait_closed(5.0)  # a 408 response MAY precede the close
                except TimeoutError:
                    continue
                closed = True
                break
    elapsed = time.monotonic() - t0
    assert closed, "slow request still open after %.1fs" % elapsed
    assert elapsed >= 0.3, "closed after only %.3fs of a 500 ms request timeout" % elapsed
    if got:
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert_status_ok(nd)


# =================================================================================================
# §1, §11 Persistence and restarts
# =================================================================================================


def write_reference_state(c: h.Client) -> dict[bytes, bytes | None]:
    """Writes values, an overwrite, an empty value, tombstones and a re-create; returns the
    expected state (None = absent/tombstone)."""
    big = os.urandom(256 * KIB)
    steps = [
        ("PUT", b"plain", b"v1"),
        ("PUT", b"over", b"old value"),
        ("PUT", b"over", b"new"),
        ("PUT", b"empty", b""),
        ("PUT", b"gone", b"doomed"),
        ("DELETE", b"gone", None),
        ("DELETE", b"never", None),
        ("PUT", b"again", b"first"),
        ("DELETE", b"again", None),
        ("PUT", b"again", b"second"),
        ("PUT", b"bin\x00\xff\r", b"\x00\r\n\r\n\xff"),
        ("PUT", b"big", big),
    ]
    want: dict[bytes, bytes | None] = {}
    for op, k, v in steps:
        if op == "PUT":
            assert c.put(k, v).status == 201
            want[k] = v
        else:
            assert c.delete(k).status == 202
            want[k] = None
    return want


def assert_state(nd: h.Node, want: dict[bytes, bytes | None]):
    with nd.client() as c:
        for k, v in want.items():
            r = c.get(k)
            if v is None:
                assert r.status == 404, "%r: expected 404 (tombstone/absent), got %d %r" % (
                    k, r.status, r.body[:60])
            else:
                assert r.status == 200, "%r: expected 200, got %d" % (k, r.status)
                assert r.body == v, "%r: wrong value after restart" % k
    _, got = range_records(nd, b"\x01")
    assert got == sorted((k, v) for k, v in want.items() if v is not None and b"\n" not in k)


def test_sigterm_exits_0_and_port_then_refuses_connections(fresh_node):
    assert fresh_node.stop() == 0
    assert h.port_refuses(fresh_node.port)


def test_sigint_exits_0(fresh_node):
    assert fresh_node.stop(sig=signal.SIGINT) == 0
    assert h.port_refuses(fresh_node.port)


@pytest.mark.parametrize("row_cache", ["134217728", "0"])
def test_reads_see_the_newest_version_over_a_cached_older_one(node_factory, row_cache):
    # The row cache keeps records read from an SST; a newer version in the memtable must win
    # over the cached one, and a delete must hide it. A restart flushes the recovered memtable
    # into an SST (RocksDB's default), so the first reads after it come from SSTs.
    nd = node_factory("--row-cache-bytes", row_cache)
    keys = [b"rc%03d" % i for i in range(50)]

    def want(k, phase):
        if phase == 0 or k in keys[40:]:
            return 200, b"one-" + k
        return (200, b"two-" + k) if k in keys[:25] else (404, None)

    def check(c, phase):
        for k in keys:
            r = c.get(k)
            st, body = want(k, phase)
            assert r.status == st, (phase, k, r)
            if body is not None:
                assert r.body == body, (phase, k, r)

    with nd.client() as c:
        for k in keys:
            assert c.put(k, b"one-" + k).status == 201
    nd.restart()
    with nd.client() as c:
        check(c, 0)
        check(c, 0)  # served from the row cache when it is on
        for k in keys[:25]:
            assert c.put(k, b"two-" + k).status == 201
        for k in keys[25:40]:
            assert c.delete(k).status == 202
        check(c, 1)
        check(c, 1)
        m = c.request("GET", "/metrics").body.decode()
    cap = [ln for ln in m.splitlines() if ln.startswith("dkv_rocksdb_row_cache_capacity_bytes ")]
    assert cap == ["dkv_rocksdb_row_cache_capacity_bytes " + row_cache], cap
    used = [ln for ln in m.splitlines() if ln.startswith("dkv_rocksdb_row_cache_usage_bytes ")]
    assert (int(used[0].split()[1]) > 0) == (row_cache != "0"), used
    nd.restart()
    with nd.client() as c:
        check(c, 1)


def test_acknowledged_state_survives_sigterm_restart(fresh_node):
    with fresh_node.client() as c:
        want = write_reference_state(c)
    fresh_node.restart()
    assert_state(fresh_node, want)


def test_acknowledged_state_survives_sigkill(fresh_node):
    # kill -9 right after the last 201/202: the WAL write(2) happened before the answer.
    with fresh_node.client() as c:
        want = write_reference_state(c)
        fresh_node.kill()
    assert h.port_refuses(fresh_node.port)
    fresh_node.start()
    assert_state(fresh_node, want)


def test_sigterm_exits_promptly_despite_idle_connections_and_a_stalled_stream(fresh_node):
    items = [(b"s%05d" % i, bytes([65 + i % 26]) * KIB) for i in range(4000)]
    h.bulk_put(fresh_node.port, items)
    idle = [fresh_node.raw() for _ in range(3)]
    stalled = fresh_node.raw(rcvbuf=8 * KIB)
    try:
        for c in idle:
            assert c.request("GET", "/v0/status").status == 200
        stalled.send(http_request("GET", entities_target(b"s")))
        assert stalled.read_head()[1] == 200  # then never read on: the writer is blocked
        with fresh_node.client() as c:
            assert c.put(b"last", b"acked").status == 201
        t0 = time.monotonic()
        assert fresh_node.stop(timeout_s=15) == 0
        assert time.monotonic() - t0 < 15
        for c in idle:  # idle keep-alive connections were closed, not left hanging
            c.wait_closed(1.0)
    finally:
        for c in idle + [stalled]:
            c.close()
    assert h.port_refuses(fresh_node.port)
    fresh_node.start()
    _, got = range_records(fresh_node, b"s")
    assert got == items
    with fresh_node.client() as c:
        assert c.get(b"last").body == b"acked"


def test_tombstone_survives_sigkill(fresh_node):
    with fresh_node.client() as c:
        assert c.put(b"k", b"alive").status == 201
        fresh_node.restart()  # the value is now older than the WAL tail
    with fresh_node.client() as c:
        assert c.delete(b"k").status == 202
        fresh_node.kill()
    fresh_node.start()
    with fresh_node.client() as c:
        assert c.get(b"k").status == 404
    assert range_records(fresh_node, b"k")[1] == []


def test_writes_after_a_replay_survive_another_sigkill(fresh_node):
    with fresh_node.client() as c:
        want = write_reference_state(c)
        fresh_node.kill()
    fresh_node.start()
    with fresh_node.client() as c:
        assert c.put(b"plain", b"v2").status == 201
        assert c.delete(b"over").status == 202
        assert c.put(b"gone", b"back").status == 201
        assert c.put(b"empty", b"no longer").status == 201
        want.update({b"plain": b"v2", b"over": None, b"gone": b"back", b"empty": b"no longer"})
        fresh_node.kill()
    fresh_node.start()
    assert_state(fresh_node, want)
    fresh_node.restart()  # and a graceful restart after all that
    assert_state(fresh_node, want)


def test_thousands_of_acknowledged_writes_survive_sigkill(fresh_node):
    items = [(b"n%05d" % i, b"%d" % i * (i % 50)) for i in range(3000)]
    h.bulk_put(fresh_node.port, items)
    fresh_node.kill()
    fresh_node.start()
    _, got = range_records(fresh_node, b"n")
    assert got == items


def test_restart_on_emptied_data_dir_holds_no_data(fresh_node):
    with fresh_node.client() as c:
        assert c.put(b"k", b"v").status == 201
    assert fresh_node.stop() == 0
    shutil.rmtree(fresh_node.data_dir)
    fresh_node.start()
    with fresh_node.client() as c:
        assert c.get(b"k").status == 404
    assert range_records(fresh_node, b"\x01")[1] == []


def test_missing_data_dir_is_created(node_factory, tmp_path):
    nd = node_factory()  # the harness never creates the data dir itself
    assert nd.data_dir.is_dir()
    with nd.client() as c:
        assert c.put(b"k", b"v").status == 201
    assert nd.stop() == 0
    assert any(nd.data_dir.iterdir())
    # Persistent state lives in the data dir only: the node's cwd holds nothing else.
    assert sorted(p.name for p in nd.data_dir.parent.iterdir()) == ["data", "dkv.log"]


def test_node_starts_and_serves_status_while_all_peers_are_down(cluster_factory):
    c = cluster_factory(3, start=False)
    c.start(only=[0])  # peers 1 and 2 never start
    with c[0].client() as cl:
        assert cl.status().status == 200
        # §8: refused peers fail at once; default quorum 2/3 is impossible with one node up.
        t0 = time.monotonic()
        assert cl.put(b"k", b"v").status == 504
        assert time.monotonic() - t0 < 2.0


# =================================================================================================
# §10 Large ranges: streaming, backpressure
# =================================================================================================

BIG_N = 20000
BIG_VALUE_BYTES = 1 * KIB


def big_key(i: int) -> bytes:
    return b"big/%06d" % i


def big_value(i: int) -> bytes:
    return ((b"%06d|" % i) * (BIG_VALUE_BYTES // 7 + 1))[:BIG_VALUE_BYTES]


@pytest.fixture(scope="module")
def big_node(dkv_bin, tmp_path_factory):
    """A node holding BIG_N records of 1 KiB (about 20 MiB), written by 4 pipelining clients."""
    c = h.Cluster(tmp_path_factory.mktemp("big"), 1, name="big").start()
    nd = c[0]
    items = [(big_key(i), big_value(i)) for i in range(BIG_N)]
    with ThreadPoolExecutor(max_workers=4) as ex:
        futs = [ex.submit(h.bulk_put, nd.port, items[i::4]) for i in range(4)]
        dl = h.Deadline(120)
        for f in futs:
            f.result(timeout=dl.remaining())
    yield nd
    problems = c.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def read_big_range(c: h.RawConn, slow: bool) -> int:
    """Reads the rest of a big range response, checking every record; returns the count."""
    n = 0
    for chunk in c.iter_chunks():
        k, v = h.parse_records([chunk])[0]
        assert k == big_key(n), "record %d: key %r" % (n, k)
        assert v == big_value(n), "record %d: wrong value" % n
        n += 1
        if slow and n % 64 == 0:
            time.sleep(0.002)
    return n


@pytest.mark.timeout_s(150)
def test_large_range_streams_every_record_in_order_to_a_slow_reader(big_node):
    with big_node.raw(rcvbuf=16 * KIB, timeout_s=30) as c:
        c.send(http_request("GET", entities_target(b"big/", b"big0")))
        _, status, _, headers = c.read_head()
        assert status == 200
        assert ("transfer-encoding", "chunked") in [(k, v.lower()) for k, v in headers]
        time.sleep(0.5)  # let the server hit a full socket buffer before we read on
        assert read_big_range(c, slow=True) == BIG_N
        assert c.request("GET", "/v0/status").status == 200  # still keep-alive


@pytest.mark.timeout_s(150)
def test_requests_are_served_while_a_large_range_stream_is_blocked(big_node):
    with big_node.raw(rcvbuf=16 * KIB, timeout_s=30) as stream:
        stream.send(http_request("GET", entities_target(b"big/", b"big0")))
        _, status, _, _ = stream.read_head()
        assert status == 200
        # The stream now waits on our full receive buffer; everything else must go on.
        with big_node.client(timeout_s=5) as c:
            for i in range(20):
                t0 = time.monotonic()
                assert c.status().status == 200
                assert c.put(b"side/%d" % i, b"v%d" % i).status == 201
                r = c.get(big_key(i * 997))
                assert (r.status, r.body) == (200, big_value(i * 997))
                _, got = range_records(big_node, b"side/", b"side0")
                assert len(got) == i + 1
                assert time.monotonic() - t0 < 5.0
        with h.RawConn(big_node.port, timeout_s=30) as other:
            other.send(http_request("GET", entities_target(b"big/", b"big0")))
            _, status, _, _ = other.read_head()
            assert status == 200
            assert read_big_range(other, slow=False) == BIG_N
        assert read_big_range(stream, slow=False) == BIG_N


# =================================================================================================
# Command line
# =================================================================================================


def test_help_exits_0_with_usage_on_stdout(dkv_bin, tmp_path):
    r = h.run_dkv(["--help"], tmp_path)
    assert r.returncode == 0
    assert b"--listen" in r.stdout and b"--cluster" in r.stdout


def test_version_exits_0_and_prints_a_version(dkv_bin, tmp_path):
    r = h.run_dkv(["--version"], tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip()


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-flag"],
        ["--io-threads", "abc"],
        ["--io-threads", "0"],
        ["--max-body-bytes", "-5"],
        ["--log-level", "loud"],
        ["--listen"],
        ["stray-positional"],
    ],
)
def test_bad_command_line_exits_2_with_message_on_stderr(dkv_bin, tmp_path, args):
    port = h.free_port()
    base = ["--listen", "127.0.0.1:%d" % port, "--data", str(tmp_path / "d")]
    try:
        r = h.run_dkv(base + args, tmp_path, timeout_s=5)
    except subprocess.TimeoutExpired:
        pytest.fail("dkv %s started instead of rejecting the flags" % " ".join(args))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip()


def test_self_not_in_cluster_refuses_to_start(dkv_bin, tmp_path):
    p1, p2 = h.free_port(), h.free_port()
    args = ["--listen", "127.0.0.1:%d" % p1, "--self", "http://127.0.0.1:%d" % p1,
            "--cluster", "http://127.0.0.1:%d" % p2, "--data", str(tmp_path / "d")]
    try:
        r = h.run_dkv(args, tmp_path, timeout_s=5)
    except subprocess.TimeoutExpired:
        pytest.fail("dkv started although --self is not in --cluster")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip()
    assert h.port_refuses(p1)


def test_second_node_on_a_busy_port_fails_to_start(fresh_node, tmp_path):
    args = ["--listen", "127.0.0.1:%d" % fresh_node.port, "--self", fresh_node.url,
            "--cluster", fresh_node.url, "--data", str(tmp_path / "other")]
    try:
        r = h.run_dkv(args, tmp_path, timeout_s=10)
    except subprocess.TimeoutExpired:
        pytest.fail("a second dkv started on a port that is already in use")
    assert r.returncode != 0
    assert_status_ok(fresh_node)
