"""Print pip constraints pinning every dependency to the lower bound pyproject.toml declares.

CI installs the project once with these, so that a declared floor is one that works.
"""

import re
import sys
from pathlib import Path

import tomllib

project = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text())
project = project["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[2:]:
    requirements += project["optional-dependencies"][extra]
for requirement in requirements:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*(,.*)?", requirement)
    if match is None:
        sys.exit(f"no lower bound to pin in {requirement!r}")
    print(f"{match[1]}=={match[2]}")
