"""The pure parts of trusted clusters: merged pages and their cursors, the tunnel codec, the
certificates, and a leaf's mapping rule."""

from __future__ import annotations

import datetime as dt
import random
import ssl
from typing import Any

import pytest
from cryptography import x509

from api.federation import merge, pki
from api.federation.tunnel import Kind, decode, encode, encode_json
from schemas.links import via_leaf
from sessionvault.errors import ValidationError
from storage.federation import MappingRule, choose_mapping

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _key(item: dict[str, Any]) -> merge.Key:
    return (item["t"], item["id"])


def _leaf_page(
    items: list[dict[str, Any]], position: merge.Position, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """What a leaf answers: ``limit`` items after ``position`` (newest first), and whether
    there are more."""
    ordered = sorted(items, key=_key, reverse=True)
    if isinstance(position, list):
        ordered = [i for i in ordered if _key(i) < tuple(position)]
    return ordered[:limit], len(ordered) > limit


def _page_through(
    leaves: dict[str, list[dict[str, Any]]], limit: int, down: dict[int, set[str]] | None = None
) -> tuple[list[tuple[Any, ...]], list[merge.Merged]]:
    fp = merge.fingerprint("search", [("text", "x")], sorted(leaves), "tok")
    cursor: str | None = None
    got: list[tuple[Any, ...]] = []
    pages = []
    n = 0
    while True:
        positions = merge.decode_cursor(cursor, fp) if cursor else dict.fromkeys(leaves)
        answers = []
        for name, items in leaves.items():
            if name in (down or {}).get(n, set()):
                answers.append(merge.LeafAnswer(name, "down", message=f"leaf {name} is down"))
            elif positions.get(name) == merge.END:
                answers.append(merge.LeafAnswer(name, "ok"))
            else:
                page, more = _leaf_page(items, positions.get(name), limit)
                answers.append(merge.LeafAnswer(name, "ok", page, more))
        merged = merge.merge_page(answers, positions, key=_key, limit=limit)
        pages.append(merged)
        got += [(i["t"], i["id"], i["leaf"]) for i in merged.items]
        n += 1
        if merged.partial:
            continue  # ask the same page again (the leaf is back on the next try)
        cursor = merge.next_cursor(merged, fp)
        if cursor is None:
            return got, pages


def test_merged_pages_are_the_union_in_keyset_order_for_any_page_size() -> None:
    rng = random.Random(7)
    for limit in (1, 2, 3, 7, 50):
        leaves = {
            name: [{"t": rng.randrange(100), "id": f"{name}-{i}"} for i in range(rng.randrange(25))]
            for name in ("a", "b", "c")
        }
        got, _ = _page_through(leaves, limit)
        want = sorted(
            ((i["t"], i["id"], name) for name, items in leaves.items() for i in items),
            key=lambda k: ((k[0], k[1]), k[2]),
            reverse=True,
        )
        assert got == want, limit


def test_a_leaf_down_is_named_partial_and_the_same_cursor_completes_the_page_later() -> None:
    leaves = {
        "a": [{"t": t, "id": f"a{t}"} for t in range(0, 20, 2)],
        "b": [{"t": t, "id": f"b{t}"} for t in range(1, 20, 2)],
    }
    _got, pages = _page_through(leaves, 4, down={1: {"b"}})
    assert pages[1].partial
    assert {e["name"]: e["status"] for e in pages[1].leaves} == {"a": "ok", "b": "down"}
    assert [i["leaf"] for i in pages[1].items] == ["a"] * 4
    # The partial page is asked again: the union, in order, nothing skipped or repeated.
    complete = [
        k for p in pages if not p.partial for k in [(i["t"], i["id"], i["leaf"]) for i in p.items]
    ]
    assert [k[0] for k in complete] == list(range(19, -1, -1))


def test_no_access_is_a_complete_empty_answer_and_ends_that_leaf() -> None:
    answers = [
        merge.LeafAnswer("a", "ok", [{"t": 1, "id": "x"}], more=False),
        merge.LeafAnswer("b", "no_access", message="maps no tenant"),
    ]
    merged = merge.merge_page(answers, {"a": None, "b": None}, key=_key, limit=10)
    assert not merged.partial
    assert merged.positions == {"a": merge.END, "b": merge.END}
    assert merge.next_cursor(merged, "fp") is None


def test_a_cursor_is_refused_for_another_question_and_when_malformed() -> None:
    fp = merge.fingerprint("search", [("text", "rm")], ["a"], "tok")
    cursor = merge.encode_cursor({"a": [5, "x"]}, fp)
    assert merge.decode_cursor(cursor, fp) == {"a": [5, "x"]}
    other = merge.fingerprint("search", [("text", "ls")], ["a"], "tok")
    with pytest.raises(ValidationError, match="different question"):
        merge.decode_cursor(cursor, other)
    with pytest.raises(ValidationError, match="malformed"):
        merge.decode_cursor("not-a-cursor!", fp)
    # Page size and the cursor itself are not part of the question.
    assert merge.fingerprint("search", [("text", "rm"), ("limit", "5")], ["a"], "tok") == fp


def test_tunnel_messages_round_trip_and_garbage_is_refused() -> None:
    frame = decode(encode_json(Kind.REQ, 7, {"path": "/v1/search"}))
    assert (frame.kind, frame.stream, frame.json()) == (Kind.REQ, 7, {"path": "/v1/search"})
    data = bytes(range(256))
    assert decode(encode(Kind.DATA, 2**32 - 1, data)).payload == data
    assert decode(encode(Kind.CREDIT, 1, (3).to_bytes(4, "big"))).credit() == 3
    for bad in (b"", b"\x01\x00", "text", b"\x63\x00\x00\x00\x01"):
        with pytest.raises(ValidationError):
            decode(bad)


def test_a_leaf_certificate_names_its_leaf_and_verifies_only_under_its_own_root() -> None:
    ca_key, ca = pki.make_ca_pair("root", now=NOW)
    other_key, other_ca = pki.make_ca_pair("other", now=NOW)
    key = pki.new_key()
    cert = pki.sign_leaf_csr(ca_key, ca, pki.make_csr("leaf-a", key), "leaf-a", now=NOW, ttl_s=60)
    info = pki.cert_info(cert)
    assert info.name == "leaf-a"
    assert info.not_after == NOW + dt.timedelta(seconds=60)
    parsed = x509.load_pem_x509_certificate(cert)
    parsed.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    with pytest.raises((ValueError, Exception)):
        parsed.verify_directly_issued_by(x509.load_pem_x509_certificate(other_ca))
    # A renewal must name the same leaf; a join takes the name the token was made for.
    with pytest.raises(ValidationError, match="not 'leaf-a'"):
        pki.sign_leaf_csr(ca_key, ca, pki.make_csr("leaf-b", key), "leaf-a", now=NOW, ttl_s=60)
    joined = pki.sign_leaf_csr(
        other_key, other_ca, pki.make_csr("any", key), "leaf-c", now=NOW, ttl_s=60, check_name=False
    )
    assert pki.cert_info(joined).name == "leaf-c"
    assert pki.ca_pin(ca) != pki.ca_pin(other_ca)


def test_tls_contexts_require_a_client_certificate_and_check_the_root_name(tmp_path: Any) -> None:
    ca_key, ca = pki.make_ca_pair("root", now=dt.datetime.now(dt.UTC))
    for name, data in (("ca.crt", ca), ("ca.key", ca_key)):
        (tmp_path / name).write_bytes(data)
    key = pki.new_key()
    (tmp_path / "s.key").write_bytes(key)
    (tmp_path / "s.crt").write_bytes(
        pki.sign_server_cert(ca_key, ca, key, ["127.0.0.1"], now=dt.datetime.now(dt.UTC), ttl_s=60)
    )
    server = pki.server_context(tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.crt")
    assert server.verify_mode == ssl.CERT_REQUIRED
    client = pki.client_context(tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.crt")
    assert client.check_hostname
    assert client.verify_mode == ssl.CERT_REQUIRED


def test_the_first_matching_mapping_rule_decides_and_no_rule_means_no_access() -> None:
    rules = [
        MappingRule(3, "*", "*", "auditor", "audit-all", ()),
        MappingRule(1, "root", "alice", "", "acme", ("prod",)),
        MappingRule(2, "other-root", "*", "", "other", ()),
    ]
    assert choose_mapping(rules, "root", "alice", ["auditor"]).tenant == "acme"  # type: ignore[union-attr]
    assert choose_mapping(rules, "root", "bob", ["auditor"]).tenant == "audit-all"  # type: ignore[union-attr]
    assert choose_mapping(rules, "other-root", "bob", []).tenant == "other"  # type: ignore[union-attr]
    assert choose_mapping(rules, "root", "bob", ["dev"]) is None
    assert choose_mapping([], "root", "alice", []) is None


def test_links_of_a_leaf_hit_point_through_the_root() -> None:
    hit = {
        "replay": "sessionvault play abc --start-at 1.500",
        "replay_api": "/v1/sessions/abc/export?format=asciicast-v2&start_ms=1500",
        "sid": "abc",
    }
    out = via_leaf("acme-prod", hit)
    assert out["replay"] == "sessionvault play --leaf acme-prod abc --start-at 1.500"
    assert out["replay_api"] == (
        "/v1/federation/leaves/acme-prod/v1/sessions/abc/export?format=asciicast-v2&start_ms=1500"
    )
    # Whatever a name holds, the command stays one argument and the path one segment.
    odd = via_leaf("a b;c", hit)
    assert odd["replay"].startswith("sessionvault play --leaf 'a b;c' abc")
    assert odd["replay_api"].startswith("/v1/federation/leaves/a%20b%3Bc/v1/")
    assert via_leaf("a", {"replay": None, "replay_api": None}) == {
        "replay": None,
        "replay_api": None,
    }
