"""Both sides of a weight sync prove the job's control token at the rendezvous, before any tensor moves.

The sender hosts the TCP store, so it speaks first. Keys under the group name:

    auth/nonce         sender: 32 random hex digits (NO_AUTH when the sender has no token)
    auth/proof/<rank>  receiver: HMAC(token, "receiver", group, nonce, rank); NO_TOKEN or REFUSED otherwise
    auth/verdict       sender: HMAC(token, "sender", group, nonce) once every proof checks, else "denied: ..."

Only then do the ranks form the process group, under a key prefix derived from the token and the nonce, so
a process that reached the store without the token can neither take a receiver's place in the group (it
cannot find the group) nor receive the weights, and a receiver never takes weights from a sender that
cannot prove the token. A mismatch fails both sides at once with PermissionError naming the rank, instead
of a collective timing out.
"""

from __future__ import annotations

import secrets

import torch.distributed as dist

from forkrl.rollout.control_token import proof

NO_AUTH = "-"
NO_TOKEN = "no-token"
REFUSED = "refused: the sender has no control token"
OPEN_VERDICT = "open"
DENIED = "denied: "


def _key(group_name: str, what: str) -> str:
    return f"{group_name}/auth/{what}"


def _get(store: dist.Store, group_name: str, what: str) -> str:
    return store.get(_key(group_name, what)).decode()


def group_prefix(group_name: str, token: str | None, nonce: str) -> str:
    """The key prefix the process group forms under: unguessable without the token."""
    if token is None:
        return f"{group_name}/open"
    return f"{group_name}/{proof(token, 'group', group_name, nonce)[:32]}"


def announce(store: dist.Store, group_name: str, token: str | None) -> str:
    """Sender, right after creating its store (before anyone learns its address): publish the nonce."""
    nonce = secrets.token_hex(16) if token else NO_AUTH
    store.set(_key(group_name, "nonce"), nonce)
    return nonce


def admit_receivers(store: dist.Store, group_name: str, token: str | None, nonce: str, world_size: int) -> str:
    """Sender: checks the proof of every receiver rank (1..world_size-1, blocking on each until it arrives
    or the store's timeout), publishes the verdict, and returns the group prefix; PermissionError otherwise."""
    problems = []
    for rank in range(1, world_size):
        presented = _get(store, group_name, f"proof/{rank}")
        if token is None:
            if presented == REFUSED:
                problems.append(f"rank {rank} holds a control token and refuses a sender without one")
        elif presented == NO_TOKEN:
            problems.append(f"rank {rank} presented no control token")
        elif not secrets.compare_digest(presented, proof(token, "receiver", group_name, nonce, str(rank))):
            problems.append(f"rank {rank} presented a wrong control token")
    if problems:
        verdict = DENIED + "; ".join(problems)
        store.set(_key(group_name, "verdict"), verdict)
        raise PermissionError(f"weight sync {group_name}: {verdict}")
    verdict = OPEN_VERDICT if token is None else proof(token, "sender", group_name, nonce)
    store.set(_key(group_name, "verdict"), verdict)
    return group_prefix(group_name, token, nonce)


def prove_to_sender(store: dist.Store, group_name: str, token: str | None, rank: int) -> str:
    """Receiver rank `rank`: answers the sender's nonce, waits for the verdict, checks that the sender knows
    the token too, and returns the group prefix; PermissionError otherwise."""
    nonce = _get(store, group_name, "nonce")
    if token is None:
        answer = NO_TOKEN
    elif nonce == NO_AUTH:
        answer = REFUSED
    else:
        answer = proof(token, "receiver", group_name, nonce, str(rank))
    store.set(_key(group_name, f"proof/{rank}"), answer)
    verdict = _get(store, group_name, "verdict")
    if verdict.startswith(DENIED):
        raise PermissionError(f"weight sync {group_name}: the sender refused: {verdict[len(DENIED):]}")
    if answer == REFUSED:
        raise PermissionError(f"weight sync {group_name}: {REFUSED}; its weights are not taken")
    expected = OPEN_VERDICT if token is None else proof(token, "sender", group_name, nonce)
    if not secrets.compare_digest(verdict, expected):
        raise PermissionError(f"weight sync {group_name}: the sender did not prove the control token")
    return group_prefix(group_name, token, nonce)
