"""`lepton-ctl cluster snapshot save FILE | inspect FILE`: backups of the whole cluster state.

`save` asks the leader for a consistent snapshot (ControlService.SaveSnapshot,
taken after a read barrier), checks its sha256 and writes FILE atomically;
`inspect` reads a backup file offline, verifies it and prints its header.
Restoring is a controller flag (`lepton-controller --restore FILE`); the
procedure is in docs/backup.md.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from lepton import backup, errors
from lepton.client import LeptonClient
from leptonctl import render


def _header_view(h, path: str) -> dict[str, Any]:
    d = backup.header_to_dict(h)
    d["file"] = path
    return d


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _header_text(d: dict[str, Any]) -> str:
    return render.fields(
        [
            ("File", d["file"]),
            ("Applied index", d["applied_index"]),
            ("Term", d["applied_term"]),
            ("Taken", f"{_when(d['created_ms'])} by {d['leader_id'] or '-'}"),
            ("Voters", ", ".join(d["voters"]) or "-"),
            ("Size", f"{d['size_bytes']} bytes"),
            ("sha256", d["sha256"]),
            ("State digest", d["digest"]),
        ]
    )


def save(client: LeptonClient, args: Any) -> int:
    header, data = client.save_snapshot()
    try:
        backup.write_file(args.file, header, data)
    except OSError as e:
        raise errors.LeptonError(f"cannot write {args.file}: {e.strerror or e}") from None
    render.emit(_header_view(header, args.file), args.output, _header_text)
    return 0


def inspect(client: LeptonClient, args: Any) -> int:
    header, _data = backup.read_file(args.file)
    render.emit(_header_view(header, args.file), args.output, _header_text)
    return 0
