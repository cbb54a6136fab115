"""The ``file`` mail backend (the default, and what ``nurture demo`` uses): each email becomes
``<outbox id>.eml`` in the outbox folder, written atomically, so sending one message twice
leaves one file and a crash mid-write leaves none."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine.send.email import Email, mime_message


class FileMailer:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def send(self, email: Email) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{email.outbox_id}.eml"
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(mime_message(email).as_bytes())
            os.replace(temporary, self.folder / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return name
