"""`mitmesh plugin new NAME`: writes a plugin (an addon with its Options model) and its test."""

from __future__ import annotations

import re
from pathlib import Path

from mesh.config.errors import BAD_INPUT, CommandError

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")

PLUGIN = '''"""{name}: what it does, in one sentence.

    plugins:
      {name}:
        plugin: {path}:{cls}
        after: authn            # a built-in stage (docs/howto/plugins.md lists them)
        options: {{value: hello}}
    routes:
      - {{name: ..., plugins: [{name}]}}
"""

from __future__ import annotations

from mitmproxy import http
from pydantic import BaseModel, ConfigDict, Field

from mitmesh import plugin


class Options(BaseModel):
    """What mesh.yaml may set under plugins.{name}.options; checked when the plugin loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str = Field("x-{name}", description="the request header to set (default x-{name})")
    value: str = Field(description="its value")


class {cls}:
    Options = Options

    def __init__(self, options: Options):
        self.header, self.value = options.header, options.value

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        flow.request.headers[self.header] = self.value
        plugin.decide(flow, f"set {{self.header}} on route {{plugin.route(flow)}}")
'''

TEST = '''"""{name} in the real gateway chain, in-process (mitmesh.testing; no sockets)."""

from pathlib import Path

import pytest

from mitmesh.testing import body, decisions

HERE = Path(__file__).parent
pytestmark = pytest.mark.asyncio  # the kit's fixtures are async (pytest-asyncio)

CONFIG = """
services:
  app: {{versions: {{v1: {{endpoints: ["127.0.0.1:9"]}}}}}}
routes:
  - {{name: app, match: {{path: {{prefix: /app/}}}}, forward: {{service: app}}, plugins: [{name}]}}
  - {{name: other, match: {{path: {{prefix: /other/}}}}, forward: {{service: app}}}}
plugins:
  {name}:
    plugin: {file}:{cls}
    after: authn
    options: {{value: hello}}
"""


async def test_sets_the_header_on_its_routes(mitmesh_chain):
    async with mitmesh_chain(CONFIG, base=HERE) as chain:
        flow = await chain.send("/app/items")
        other = await chain.send("/other/items")
    assert flow.response.status_code == 200
    assert body(flow)["headers"]["x-{name}"] == "hello"
    assert "plugin {name}: set x-{name} on route app" in decisions(flow)
    assert "x-{name}" not in body(other)["headers"]


async def test_options_are_checked_at_load(mitmesh_chain):
    with pytest.raises(Exception, match=r"plugins\\.{re_name}\\.options\\.value: required key is missing"):
        async with mitmesh_chain(CONFIG.replace("options: {{value: hello}}", "options: {{}}"), base=HERE):
            pass
'''


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name) if part)


def new(name: str, directory: Path) -> list[Path]:
    """Write DIR/NAME.py and DIR/test_NAME.py; refuses to overwrite either."""
    if not _NAME.fullmatch(name):
        raise CommandError(f"plugin name: expected lowercase letters, digits, - and _, starting with a "
                           f"letter (got {name!r})", BAD_INPUT)
    module = name.replace("-", "_")
    plugin_file, test_file = directory / f"{module}.py", directory / f"test_{module}.py"
    for f in (plugin_file, test_file):
        if f.exists():
            raise CommandError(f"{f}: already exists; not overwritten", BAD_INPUT)
    directory.mkdir(parents=True, exist_ok=True)
    fields = {"name": name, "cls": class_name(name), "file": plugin_file.name, "path": plugin_file.as_posix(),
              "re_name": re.escape(name)}
    plugin_file.write_text(PLUGIN.format(**fields))
    test_file.write_text(TEST.format(**fields))
    return [plugin_file, test_file]


def run(args) -> int:
    written = new(args.name, Path(args.dir))
    for f in written:
        print(f"wrote {f}")
    print(f"run its test: pytest {written[1]}\nthen add it to mesh.yaml as its docstring shows "
          f"(docs/howto/plugins.md)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plugin", help="user plugins: your own addons in the chain")
    psub = p.add_subparsers(dest="plugin_command", required=True)
    n = psub.add_parser("new", help="write a plugin (an addon with its Options model) and its test")
    n.add_argument("name", metavar="NAME", help="the plugin's name in mesh.yaml, e.g. tenant-header")
    n.add_argument("--dir", default="plugins", help="where to write NAME.py and test_NAME.py "
                                                        "(default plugins)")
    n.set_defaults(func=run)
