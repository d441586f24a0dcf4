"""Bearer tokens: bound to a tenant and a role, stored only as a hash, revocable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.tokens import TokenError, TokenStore, hash_token
from tests.server.test_serve import logbus


def test_a_token_verifies_to_its_tenant_and_role_and_nothing_else_does(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    ingest = store.create("acme", "ingest")
    reviewer = store.create("globex", "reviewer", label="alice")
    assert re.fullmatch(r"lb_[A-Za-z0-9_-]{43}", ingest)
    one, two = store.verify(ingest), store.verify(reviewer)
    assert one is not None and (one.tenant, one.role) == ("acme", "ingest")
    assert two is not None and (two.tenant, two.role) == ("globex", "reviewer")
    assert store.verify(ingest[:-1] + ("A" if ingest[-1] != "A" else "B")) is None
    assert store.verify("") is None and store.verify(hash_token(ingest)) is None
    assert store.revoke(one.token_id) is True
    assert store.verify(ingest) is None and store.revoke(one.token_id) is False
    assert [(t["tenant"], t["role"], t["label"], t["revoked_at"] is not None) for t in store.list()] == [
        ("acme", "ingest", "", True), ("globex", "reviewer", "alice", False)]
    store.close()


def test_only_the_hash_is_stored(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.create("acme", "admin")
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("tokens.sqlite3*"))
    assert token.encode() not in raw and token[3:].encode() not in raw
    assert hash_token(token).encode() in raw


@pytest.mark.parametrize(("tenant", "role", "needle"), [("acme", "root", "not one of"),
                                                          ("../etc", "admin", "tenant name"),
                                                          ("Acme", "ingest", "tenant name")])
def test_bad_tenant_or_role_is_refused_with_the_rule(tmp_path: Path, tenant: str, role: str,
                                                     needle: str) -> None:
    store = TokenStore(tmp_path)
    with pytest.raises(TokenError, match=needle):
        store.create(tenant, role)
    assert store.list() == []


def test_cli_prints_only_the_token_and_refuses_a_bad_role(tmp_path: Path) -> None:
    done = logbus(tmp_path, "token", "create", "--tenant", "acme", "--role", "ingest")
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and token.startswith("lb_")
    store = TokenStore(tmp_path)
    principal = store.verify(token)
    assert principal is not None and principal.tenant == "acme"
    store.close()
    bad = logbus(tmp_path, "token", "create", "--tenant", "acme", "--role", "root", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and bad.stdout == ""
    listed = logbus(tmp_path, "token", "list", "--json").stdout
    assert token not in listed and '"role": "ingest"' in listed
