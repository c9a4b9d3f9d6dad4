"""The commands of the selected state (RFC 9051 §6.4): FETCH, STORE, SEARCH (with ESEARCH,
RFC 4731, and SEARCHRES, RFC 5182), COPY, MOVE (RFC 6851), EXPUNGE, UID EXPUNGE (RFC 4315),
CLOSE, UNSELECT (RFC 3691); their UID forms; CONDSTORE and QRESYNC modifiers (RFC 7162).

Commands given by message number never see EXPUNGE responses in between (RFC 9051 §7.5.1);
their UID forms and the others do.
"""

from __future__ import annotations

from mail.imap import fetch, search, store
from mail.imap.folders import Selected, poke
from mail.imap.parser import Bad, Parser, SequenceSet
from mail.imap.responses import sequence_set
from mail.imap.server import AUTHENTICATED, SEL, Connection, No, command
from mail.imap.threads import run, write


def selected_folder(conn: Connection) -> Selected:
    """The selected folder. Raises No when another session deleted it."""
    selected = conn.selected
    if selected is None or selected.gone:
        raise No("NONEXISTENT", "The selected mailbox no longer exists.")
    return selected


def _writable(selected: Selected) -> None:
    if selected.readonly:
        raise No("READ-ONLY", "Mailbox is read-only.")


def _numbered(
    conn: Connection, selected: Selected, numbers: SequenceSet, *, uid: bool
) -> list[tuple[int, int]]:
    """(message number, UID) of each message a sequence set names, in order."""
    if numbers.saved or uid:
        if numbers.saved:
            chosen = set(conn.saved)
        else:
            chosen = set(numbers.select(selected.uids, selected.uids[-1] if selected.uids else 0))
        return [(seq, u) for seq, u in enumerate(selected.uids, 1) if u in chosen]
    count = len(selected.uids)
    ranges = numbers.resolve(count)
    if count == 0 or any(high > count for _, high in ranges):
        raise Bad("no such message")
    if len(ranges) == 1:
        low, high = ranges[0]
        return list(zip(range(low, high + 1), selected.uids[low - 1 : high], strict=True))
    chosen: set[int] = set()
    for low, high in ranges:
        chosen.update(range(low, high + 1))
    return [(seq, selected.uids[seq - 1]) for seq in sorted(chosen)]


def _targets(conn: Connection, selected: Selected, numbers: SequenceSet, *, uid: bool) -> list[int]:
    """The UIDs a sequence set names, in order."""
    return [u for _, u in _numbered(conn, selected, numbers, uid=uid)]


# -- FETCH -----------------------------------------------------------------------------------


async def _fetch(conn: Connection, p: Parser, *, uid: bool) -> bytes:
    selected = selected_folder(conn)
    p.sp()
    numbers = p.sequence_set()
    request = fetch.parse(p, uid=uid)
    if request.changed_since is not None or "MODSEQ" in request.items:
        conn.enable_condstore()
    if request.vanished and "QRESYNC" not in conn.enabled:
        raise Bad("VANISHED needs QRESYNC")
    await conn.sync(expunges=uid, uid_fetch=uid)
    numbered = _numbered(conn, selected, numbers, uid=uid)
    uids = [u for _, u in numbered]
    if request.vanished:
        largest = selected.state.info.uid_next - 1 if selected.state.info else 0
        asked = numbers.select(list(range(1, largest + 1)), largest)
        gone = set(asked) - set(selected.uids)
        if gone:
            conn.out += b"* VANISHED (EARLIER) " + sequence_set(gone) + b"\r\n"
    if request.sets_seen and not selected.readonly:
        unseen = [
            (u, row.flags | {"\\Seen"})
            for u in uids
            if (row := selected.row(u)) and "\\Seen" not in row.flags
        ]
        if unseen:
            modseq = await write(store.set_flags, selected.folder_id, unseen, durable=False)
            selected.state.record(modseq, flags=dict(unseen))
            await selected.state.refresh()
            if "FLAGS" not in request.items:
                request.items.append("FLAGS")
    if conn.condstore and "FLAGS" in request.items and "MODSEQ" not in request.items:
        request.items.append("MODSEQ")
    messages = []
    told = selected.told if "FLAGS" in request.items else None
    since = request.changed_since
    for seq, u in numbered:
        row = selected.row(u)
        if row is None or (since is not None and row.modseq <= since):
            continue
        if told is not None:
            told[u] = row.flags
        messages.append((seq, row, selected.flag_list(u, row)))
    # Large answers are built in slices, so other sessions are served in between.
    for start in range(0, len(messages), 2000):
        try:
            data, computed = await run(fetch.build, messages[start : start + 2000], request)
        except fetch.UnknownEncoding as exc:
            raise No("UNKNOWN-CTE", f"Cannot decode the {exc} transfer encoding.") from None
        conn.out += data
        if computed:
            await write(store.save_summaries, computed, durable=False)
        if len(conn.out) > 1 << 20:
            await conn.flush()
    return b"OK %sFETCH completed." % (b"UID " if uid else b"")


@command("FETCH", SEL)
async def fetch_(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _fetch(conn, p, uid=False)


@command("UID FETCH", SEL)
async def uid_fetch(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _fetch(conn, p, uid=True)


# -- STORE -----------------------------------------------------------------------------------


async def _store(conn: Connection, p: Parser, *, uid: bool) -> bytes:
    selected = selected_folder(conn)
    p.sp()
    numbers = p.sequence_set()
    p.sp()
    unchanged_since = None
    if p.skip(b"("):
        if p.keyword() != "UNCHANGEDSINCE":
            raise Bad("unknown store modifier")
        p.sp()
        unchanged_since = p.number()
        p.expect(b")")
        p.sp()
        conn.enable_condstore()
    action = p.atom().decode().upper()
    silent = action.endswith(".SILENT")
    mode = action.removesuffix(".SILENT")
    if mode not in ("FLAGS", "+FLAGS", "-FLAGS"):
        raise Bad("bad store action")
    p.sp()
    flags = set(p.flags())
    p.finish()
    _writable(selected)
    flags.discard("\\Recent")
    await conn.sync(expunges=uid, uid_fetch=uid)
    uids = _targets(conn, selected, numbers, uid=uid)
    updates = []
    failed = []
    for u in uids:
        row = selected.row(u)
        if row is None or u in selected.ghosts:
            continue
        if unchanged_since is not None and row.modseq > unchanged_since:
            failed.append(u)
            continue
        if mode == "FLAGS":
            new = frozenset(flags)
        elif mode == "+FLAGS":
            new = row.flags | flags
        else:
            new = row.flags - flags
        if new != row.flags:
            updates.append((u, new))
    if updates:
        modseq = await write(store.set_flags, selected.folder_id, updates, durable=False)
        selected.state.record(modseq, flags=dict(updates))
        await selected.state.refresh()
    changed = {u for u, _ in updates}
    conn.out += selected.new_keywords()
    for u in uids:
        row = selected.row(u)
        if row is None or u in failed:
            continue
        selected.told[u] = row.flags
        # RFC 7162 §3.1.3: with UNCHANGEDSINCE, the messages left alone are told too when
        # their flags differ from what the client holds; without .SILENT every one is.
        if silent and not (conn.condstore and u in changed):
            continue
        items = b""
        if uid:
            items += b"UID %d " % u
        items += b"FLAGS " + selected.flag_list(u, row)
        if conn.condstore:
            items += b" MODSEQ (%d)" % row.modseq
        conn.out += b"* %d FETCH (%s)\r\n" % (selected.seq_of(u), items)
    if failed:
        key = sequence_set(failed) if uid else sequence_set(selected.seq_of(u) for u in failed)
        return b"OK [MODIFIED " + key + b"] Conditional STORE failed."
    return b"OK %sSTORE completed." % (b"UID " if uid else b"")


@command("STORE", SEL)
async def store_(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _store(conn, p, uid=False)


@command("UID STORE", SEL)
async def uid_store(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _store(conn, p, uid=True)


# -- SEARCH ----------------------------------------------------------------------------------


async def matching(conn: Connection, selected: Selected, keys: tuple) -> list[search.Candidate]:
    """The messages of the selected folder that match `keys`, in sequence order."""
    candidates = []
    for seq, u in enumerate(selected.uids, 1):
        row = selected.row(u)
        if row is not None:
            candidates.append(search.Candidate(seq, row, u in selected.recent))
    context = {
        "largest_seq": len(selected.uids),
        "largest_uid": selected.uids[-1] if selected.uids else 0,
        "saved": set(conn.saved),
    }
    if search._needs_content(keys):
        return await run(search.run_search, candidates, keys, context)
    return search.run_search(candidates, keys, context)


async def _search(conn: Connection, tag: bytes, p: Parser, *, uid: bool) -> bytes:
    selected = selected_folder(conn)
    try:
        query = search.parse(p)
    except search.BadCharset:
        raise No("BADCHARSET (UTF-8 US-ASCII)", "Unsupported charset.") from None
    await conn.sync(expunges=uid)
    found = await matching(conn, selected, query.keys)
    numbers = [c.row.uid if uid else c.seq for c in found]
    highest = None
    if query.uses_modseq:
        # RFC 7162 §3.1.5: the highest modseq of the messages returned.
        returned = found
        if query.returns is not None and not {"ALL", "COUNT"} & set(query.returns) and found:
            returned = [found[0]] if "MIN" in query.returns else []
            if "MAX" in query.returns:
                returned.append(found[-1])
        highest = max((c.row.modseq for c in returned), default=0)
    if query.uses_modseq:
        conn.enable_condstore()
    returns = query.returns
    if returns is None:
        line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
        if highest:
            line += b" (MODSEQ %d)" % highest
        conn.out += line + b"\r\n"
    else:
        if "SAVE" in returns:
            uids = [c.row.uid for c in found]
            # RFC 5182 §2.4: with MIN or MAX alongside, only those are saved.
            if "MIN" in returns or "MAX" in returns:
                kept = []
                if "MIN" in returns and uids:
                    kept.append(uids[0])
                if "MAX" in returns and uids:
                    kept.append(uids[-1])
                uids = sorted(set(kept))
            conn.saved = uids
        shown = [r for r in returns if r != "SAVE"]
        if shown:
            line = b'* ESEARCH (TAG "' + tag + b'")' + (b" UID" if uid else b"")
            if numbers:
                if "MIN" in shown:
                    line += b" MIN %d" % min(numbers)
                if "MAX" in shown:
                    line += b" MAX %d" % max(numbers)
                if "ALL" in shown:
                    line += b" ALL " + sequence_set(numbers)
            if "COUNT" in shown:
                line += b" COUNT %d" % len(numbers)
            if highest and numbers:
                line += b" MODSEQ %d" % highest
            conn.out += line + b"\r\n"
    return b"OK %sSEARCH completed." % (b"UID " if uid else b"")


@command("SEARCH", SEL)
async def search_(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _search(conn, tag, p, uid=False)


@command("UID SEARCH", SEL)
async def uid_search(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _search(conn, tag, p, uid=True)


# -- COPY, MOVE ------------------------------------------------------------------------------


async def _transfer(conn: Connection, p: Parser, *, uid: bool, move: bool) -> bytes:
    selected = selected_folder(conn)
    p.sp()
    numbers = p.sequence_set()
    p.sp()
    name = p.mailbox()
    p.finish()
    if move:
        _writable(selected)
    await conn.sync(expunges=uid)
    uids = _targets(conn, selected, numbers, uid=uid)
    try:
        access, info = await conn.mailboxes.info(name)
    except KeyError:
        raise No("TRYCREATE", "No such mailbox.") from None
    if not access.writable:
        raise No("READ-ONLY", "The target mailbox is read-only.")
    verb = (b"UID " if uid else b"") + (b"MOVE" if move else b"COPY")
    if not uids:
        return b"OK " + verb + b" completed."
    validity, pairs = await write(
        store.copy,
        selected.folder_id,
        uids,
        info.id,
        move=move,
        target_mailbox_id=access.mailbox_id,
        durable=True,
    )
    poke(info.id)
    code = b""
    if pairs:
        code = b"[COPYUID %d %s %s] " % (
            validity,
            sequence_set(s for s, _ in pairs),
            sequence_set(t for _, t in pairs),
        )
    if not move:
        return b"OK " + code + verb + b" completed."
    # RFC 6851 §4.3: COPYUID comes untagged, before the EXPUNGEs (or VANISHED).
    conn.out += b"* OK " + code + b"Moved.\r\n"
    selected.state.poke()
    await selected.state.refresh()
    if "QRESYNC" in conn.enabled:
        moved = {s for s, _ in pairs}
        selected.forget(moved)
        conn.out += b"* VANISHED " + sequence_set(moved) + b"\r\n"
    await conn.sync()
    return b"OK " + verb + b" completed."


@command("COPY", SEL)
async def copy(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _transfer(conn, p, uid=False, move=False)


@command("UID COPY", SEL)
async def uid_copy(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _transfer(conn, p, uid=True, move=False)


@command("MOVE", SEL)
async def move(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _transfer(conn, p, uid=False, move=True)


@command("UID MOVE", SEL)
async def uid_move(conn: Connection, tag: bytes, p: Parser) -> bytes:
    return await _transfer(conn, p, uid=True, move=True)


# -- EXPUNGE, CLOSE, UNSELECT ----------------------------------------------------------------


async def _expunge(conn: Connection, selected: Selected, only: set[int] | None, *, report: bool) -> None:
    await selected.state.refresh()
    doomed = [
        u
        for u in selected.uids
        if (row := selected.state.messages.get(u)) is not None
        and "\\Deleted" in row.flags
        and (only is None or u in only)
    ]
    if doomed:
        modseq = await write(store.expunge, selected.folder_id, doomed, durable=True)
        selected.state.record(modseq, expunged=doomed)
    if not report:
        return
    await selected.state.refresh()
    if "QRESYNC" in conn.enabled and doomed:
        selected.forget(doomed)
        conn.out += b"* VANISHED " + sequence_set(doomed) + b"\r\n"
    await conn.sync()


@command("EXPUNGE", SEL)
async def expunge(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    selected = selected_folder(conn)
    _writable(selected)
    await _expunge(conn, selected, None, report=True)
    return b"OK EXPUNGE completed."


@command("UID EXPUNGE", SEL)
async def uid_expunge(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.sp()
    numbers = p.sequence_set()
    p.finish()
    selected = selected_folder(conn)
    _writable(selected)
    await _expunge(conn, selected, set(_targets(conn, selected, numbers, uid=True)), report=True)
    return b"OK UID EXPUNGE completed."


@command("CLOSE", SEL)
async def close(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    selected = conn.selected
    # RFC 9051 §6.4.1: CLOSE of a mailbox opened read-only expunges nothing and succeeds.
    if selected is not None and not selected.readonly and not selected.gone:
        await _expunge(conn, selected, None, report=False)
    conn.selected = None
    conn.state = AUTHENTICATED
    return b"OK CLOSE completed."


@command("UNSELECT", SEL)
async def unselect(conn: Connection, tag: bytes, p: Parser) -> bytes:
    p.finish()
    conn.selected = None
    conn.state = AUTHENTICATED
    return b"OK UNSELECT completed."
