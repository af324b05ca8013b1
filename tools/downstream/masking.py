"""Which values of a `.mcp.json` entry are secrets, to be masked wherever they land (logs, errors, results).

`secret_values(entry, expanded)` lists them; `utils.logging.register_secret` then masks each in every
written form. What counts:
- every value the entry took from the environment through `${VAR}`, wherever it landed (command,
  args, env, cwd, url, headers), except the values of `PUBLIC_VARIABLES` (a home directory or a PATH
  is in every path the bridge reports; masking it would hide more than it protects) and values
  shorter than `PLAIN_MIN_CHARS` from variables whose names do not look like credentials (a mode,
  a port, a flag: masking `slow` would turn "slowly" into "***ly" in every message);
- the values the file itself holds under a name that looks like a credential (`CREDENTIAL_NAME`):
  in env and headers, in the url (a query parameter, the password of `user:pass@`), after an args
  flag (`--token X`, `--api-key=X`). These are masked at any length, a short one as a whole word.
Literal values under ordinary names stay visible: masking PYTHONPATH, DEBUG=1 or a data file's path
would scramble every later message that happens to contain that text.
"""

from __future__ import annotations

import itertools
import re
import urllib.parse
from collections.abc import Sequence

from tools.downstream.entries import ServerEntry, StdioEntry

CREDENTIAL_NAME = re.compile(r"token|key|secret|passw|pwd|auth|credential|cookie|session", re.IGNORECASE)
PUBLIC_VARIABLES = frozenset(
    {"HOME", "USER", "LOGNAME", "PATH", "SHELL", "TERM", "PWD", "TMPDIR", "LANG", "CLAUDE_PROJECT_DIR"}
)
"""Variables whose values are not masked where they land (every other expanded value is)."""
PLAIN_MIN_CHARS = 8
"""The shortest value of an ordinary variable that is masked (a credential's is, at any length)."""


def secret_values(entry: ServerEntry, expanded: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
    """The values of `entry` to mask, each with whether to mask it at any length (see the module docstring).

    `expanded` holds the (variable, value) pairs the entry took from the environment.
    """
    found = [
        (value, credential)
        for name, value in expanded
        if name not in PUBLIC_VARIABLES
        and ((credential := bool(CREDENTIAL_NAME.search(name))) or len(value) >= PLAIN_MIN_CHARS)
    ]
    if isinstance(entry, StdioEntry):
        found += [(value, True) for key, value in entry.env.items() if CREDENTIAL_NAME.search(key)]
        for flag, value in itertools.pairwise([*entry.args, ""]):
            name, equals, inline = flag.partition("=")
            if name.startswith("-") and CREDENTIAL_NAME.search(name):
                found.append((inline if equals else value, True))
    else:
        found += [(value, True) for key, value in entry.headers.items() if CREDENTIAL_NAME.search(key)]
        url = urllib.parse.urlsplit(entry.url)
        if url.password:
            found.append((url.password, True))
        found += [(value, True) for key, value in urllib.parse.parse_qsl(url.query) if CREDENTIAL_NAME.search(key)]
    return [(value, any_length) for value, any_length in found if value]
