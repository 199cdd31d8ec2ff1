"""What the Python check scripts share: configuration from the environment (set by
integration/tests/drivers.rs), the output protocol (one JSON object per line), the phase
handshake on standard input, and the texts and names every driver uses."""

import json
import os
import sys
import traceback

HOST = os.environ["CHK_HOST"]
PORT = int(os.environ["CHK_PORT"])
DB = os.environ["CHK_DB"]
DB2 = os.environ["CHK_DB2"]
SCHEMA = os.environ["CHK_SCHEMA"]
USER = os.environ["CHK_USER"]
PASSWORD = os.environ["CHK_PASSWORD"]
MD5_USER = os.environ["CHK_MD5_USER"]
MD5_PASSWORD = os.environ["CHK_MD5_PASSWORD"]
SUPER_USER = os.environ["CHK_SUPER_USER"]
SUPER_PASSWORD = os.environ["CHK_SUPER_PASSWORD"]
ROLE_A = os.environ["CHK_ROLE_A"]
ROLE_B = os.environ["CHK_ROLE_B"]

# LISTEN channel and two-phase gid of this run (the schema is unique per driver and run).
CHANNEL = SCHEMA + "_chan"
GID = SCHEMA + "_gid"

# Non-ASCII texts of each encoding (the test seeds rows 1 and 2 of SCHEMA.texts with the
# first of each).
LATIN1_SEED = "café crème à la française, déjà vu"
KOI8R_SEED = "Съешь же ещё этих мягких французских булок"
LATIN1_NEW = "naïve façade, Ærø, ñandú, ¿qué? ¡sí! 0,5 µm ±1 °C"
KOI8R_NEW = "Широкая электрификация южных губерний даст мощный толчок"
LATIN1_QUERY = "déjà vu"
KOI8R_QUERY = "ёжик в тумане"

# How long to wait for a notification that should arrive.
NOTIFY_WAIT = 3.0


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Skip(Exception):
    """The driver cannot do this check; the message says why."""


def run_check(phase, name, fn):
    try:
        result = fn()
    except Skip as s:
        emit({"phase": phase, "check": name, "skipped": str(s)})
        return
    except Exception as e:  # noqa: BLE001 - every failure becomes a comparable line
        log(f"[{phase} {name}] unexpected error:")
        traceback.print_exc(file=sys.stderr)
        result = {"unexpected_error": describe(e)}
    emit({"phase": phase, "check": name, "result": result})


async def run_check_async(phase, name, fn):
    try:
        result = await fn()
    except Skip as s:
        emit({"phase": phase, "check": name, "skipped": str(s)})
        return
    except Exception as e:  # noqa: BLE001
        log(f"[{phase} {name}] unexpected error:")
        traceback.print_exc(file=sys.stderr)
        result = {"unexpected_error": describe(e)}
    emit({"phase": phase, "check": name, "result": result})


def info(phase, name, value):
    emit({"phase": phase, "info": name, "value": value})


def describe(e):
    """A comparable description of an exception: its class, SQLSTATE and message."""
    out = {"type": type(e).__name__}
    code = getattr(e, "sqlstate", None)
    if code:
        out["sqlstate"] = code
    out["message"] = normalise_message(str(e))
    return out


def normalise_message(msg):
    """The server's primary message out of a driver's text: without libpq's
    'connection to server at "127.0.0.1", port N failed:' prefix and 'FATAL:' tags."""
    msg = msg.strip()
    for tag in ("FATAL:", "ERROR:"):
        if tag in msg:
            msg = msg.split(tag, 1)[1].strip()
            break
    return msg.splitlines()[0].strip() if msg else msg


def wait_go(next_phase):
    """Tells the test that the sessions are ready for `next_phase` and waits for its line."""
    emit({"phase": "ready", "next": next_phase})
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("standard input closed before " + next_phase)


def digest_rows(rows):
    import hashlib

    return hashlib.md5("\n".join("|".join(str(c) for c in r) for r in rows).encode()).hexdigest()


async def wait_go_async(next_phase):
    """wait_go for asyncio scripts: standard input is read on a thread, so that the event
    loop goes on (notifications keep arriving) while the test switches backends."""
    import asyncio

    emit({"phase": "ready", "next": next_phase})
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("standard input closed before " + next_phase)
