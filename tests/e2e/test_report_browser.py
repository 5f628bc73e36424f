"""The HTML report of a real run, opened in headless Chromium: it renders, and shows the key figures.

Needs Chromium (``/usr/bin/chromium`` or ``chromium`` on PATH); CI installs it, elsewhere the test skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import World
from tests.e2e.helpers import explain, report_paths

pytestmark = pytest.mark.browser

BUSINESS_DATE = date(2026, 5, 4)
WIDTH, HEIGHT = 1240, 1754  # A4 at 150 dpi
PASS_GREEN = (0xD9, 0xF2, 0xDD)  # background of a PASS badge (render._CSS .pass)
Rendered = tuple[Path, dict[str, Any]]  # the HTML file and the run's JSON report


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("Chromium not found: apt-get install chromium (CI installs it)")


def _browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a local file, offline and without a first-run or sync noise."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    channels: int
    rows: list[bytes]

    def pixels(self) -> set[tuple[int, ...]]:
        c = self.channels
        return {tuple(row[i : i + 3]) for row in self.rows for i in range(0, len(row), c)}


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> Png:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG with the standard library (zlib + struct)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, bytearray(), b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((x + p) & 0xFF for x, p in zip(line, previous, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                upper_left = previous[i - channels] if i >= channels else 0
                line[i] = (line[i] + _paeth(left, previous[i], upper_left)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return Png(width, height, channels, rows)


@pytest.fixture(scope="module")
def html_report(new_world: Callable[[], World], tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """A real run's HTML report written by `batch report --format html -o`, and its JSON twin."""
    world = new_world()
    seeded = world.cli("sandbox", "seed", "--size", "40")
    assert seeded.returncode == 0, explain(seeded)
    run = world.cli("run", "--date", BUSINESS_DATE.isoformat(), "--trigger", "test")
    assert run.returncode == 3, explain(run)  # one payout held above the cap
    document = json.loads(report_paths(run.stdout)["json"].read_text(encoding="utf-8"))
    run_id = document["runs"][0]["id"]
    target = tmp_path_factory.mktemp("browser") / "report.html"
    written = world.cli("report", "--run", run_id, "--format", "html", "-o", str(target))
    assert written.returncode == 0, explain(written)
    return target, document


def test_html_report_renders_as_a_non_blank_a4_page(html_report: Rendered, tmp_path: Path) -> None:
    """Chromium renders the report to a screenshot with content and the green PASS badges on it."""
    page, _ = html_report
    shot = tmp_path / "report.png"
    done = _browse(page, tmp_path / "profile", f"--screenshot={shot}", "--hide-scrollbars")
    assert shot.exists(), done.stderr[-2000:]
    image = decode_png(shot.read_bytes())
    assert (image.width, image.height) == (WIDTH, HEIGHT)
    colours = image.pixels()
    assert len(colours) > 50, "more than a blank page"
    assert PASS_GREEN in colours, "the PASS checks are shown in green"
    ink = sum(1 for row in image.rows[:400] for i in range(0, len(row), image.channels) if row[i] < 128)
    assert ink > 2000, "text is drawn in the header block"


def test_html_report_dom_holds_the_key_figures(html_report: Rendered, tmp_path: Path) -> None:
    """The DOM Chromium builds from the report shows the run id, each currency's totals, the checks and the chain."""
    page, document = html_report
    done = _browse(page, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    runs, totals, audit = document["runs"], document["totals"], document["audit"]
    assert runs[0]["id"] in dom
    assert BUSINESS_DATE.isoformat() in dom
    assert runs[0]["config_digest"] in dom
    for ccy, figures in totals.items():
        assert f"<td>{ccy}</td>" in dom
        assert figures["requested"] in dom
        assert figures["paid"]["amount"] in dom
    assert Decimal(totals["EUR"]["paid"]["amount"]) > 0
    assert dom.count(">PASS<") == len(document["checks"]) + 1  # every check and the audit chain
    assert audit["head_hash"] in dom
    assert "<script" not in dom


# -- dry run, carried-over payouts, the reconciliation, a bank's own template ---------------------------

DRY_BLUE = (0xDD, 0xE8, 0xF7)  # background of the DRY RUN banner (report_base.html.j2 .banner.dry)
BANK_ORANGE = (0xFF, 0x7A, 0x00)  # the bank's logo block in its overriding template
BANK_TEMPLATE = """{% extends "report_base.html.j2" %}
{% block logo %}<div style="background:#ff7a00;color:#fff;padding:4mm;font-size:16pt">ACME Bank - payouts</div>
{% endblock %}
{% block footer %}<footer>ACME Bank internal: rendered from the bank's own template.</footer>{% endblock %}
"""


@dataclass(frozen=True)
class Pages:
    carried: Path  # the run that finished the payouts of a killed run
    dry: Path  # a dry run
    bank: Path  # the carried-over run, rendered with the bank's template
    carried_json: dict[str, Any]


def _killed_run(world: World, date_text: str) -> None:
    """`batch run` SIGKILLed at the first withdraw event (the crash tests' seam): payouts are left open."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env |= {"BATCH_CRASH_POINTS": "SEND_EVENT.before:1", "BATCH_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "batch", "--config", str(world.cli.config), "run", "--date", date_text]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, explain(done)


@pytest.fixture(scope="module")
def pages(new_world: Callable[[], World], tmp_path_factory: pytest.TempPathFactory) -> Pages:
    """HTML reports of a run that carried over a killed run's payouts, of a dry run, and with a bank template."""
    world = new_world()
    folder = tmp_path_factory.mktemp("pages")
    assert world.cli("sandbox", "seed", "--size", "40").returncode == 0
    _killed_run(world, "2026-05-05")
    carried = world.cli("run", "--date", "2026-05-05", "--trigger", "test")
    assert carried.returncode in (0, 3), explain(carried)
    paths = report_paths(carried.stdout)
    dry = world.cli("run", "--date", "2026-05-06", "--dry-run", "--trigger", "test")
    assert dry.returncode in (0, 3), explain(dry)
    templates = folder / "bank-templates"
    templates.mkdir()
    (templates / "report.html.j2").write_text(BANK_TEMPLATE, encoding="utf-8")
    bank_config = folder / "bank.toml"
    bank_config.write_text(
        world.cli.config.read_text(encoding="utf-8") + f"\n[report]\ntemplate_dir = {json.dumps(str(templates))}\n",
        encoding="utf-8",
    )
    carried_json = json.loads(paths["json"].read_text(encoding="utf-8"))
    bank = folder / "bank.html"
    done = replace(world.cli, config=bank_config)(
        "report", "--run", carried_json["runs"][0]["id"], "--format", "html", "-o", str(bank)
    )
    assert done.returncode == 0, explain(done)
    return Pages(paths["html"], report_paths(dry.stdout)["html"], bank, carried_json)


def _screenshot(page: Path, folder: Path) -> Png:
    shot = folder / f"{page.stem}.png"
    done = _browse(page, folder / "profile", f"--screenshot={shot}", "--hide-scrollbars")
    assert shot.exists(), done.stderr[-2000:]
    return decode_png(shot.read_bytes())


def _dom(page: Path, folder: Path) -> str:
    done = _browse(page, folder / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_dry_run_report_shows_the_dry_run_banner_and_would_pay(pages: Pages, tmp_path: Path) -> None:
    """A dry run's page is marked DRY RUN in the title and a blue banner, its payable amounts under would pay."""
    image = _screenshot(pages.dry, tmp_path)
    assert DRY_BLUE in image.pixels(), "the DRY RUN banner is drawn"
    dom = _dom(pages.dry, tmp_path)
    assert "<title>DRY RUN - Payout run" in dom
    assert "DRY RUN: nothing was paid" in dom
    assert "Would pay" in dom
    assert 'class="banner pass"' not in dom


def test_carried_over_group_and_reconcile_section_are_shown(pages: Pages, tmp_path: Path) -> None:
    """The run after a killed one shows its carried-over payouts and the reconciliation read back, 0 breaks."""
    carried = [x for x in pages.carried_json["lines"] if x["group"] == "carried_over"]
    assert carried, "the killed run left payouts to carry over"
    image = _screenshot(pages.carried, tmp_path)
    assert PASS_GREEN in image.pixels()
    dom = _dom(pages.carried, tmp_path)
    assert "carried over from an earlier run" in dom
    assert "Reconciliation against the ledger and InvestSuite (0 breaks)" in dom
    assert "Ledger: transfers read back" in dom and "InvestSuite: SETTLED, read back" in dom
    for line in carried:
        assert line["payout_id"] in dom or line["portfolio_id"] in dom


def test_bank_template_overrides_the_logo_and_footer(pages: Pages, tmp_path: Path) -> None:
    """A bank's template_dir replaces the logo and footer blocks; the rest of the report is unchanged."""
    image = _screenshot(pages.bank, tmp_path)
    assert BANK_ORANGE in image.pixels(), "the bank's logo block is drawn"
    dom = _dom(pages.bank, tmp_path)
    assert "ACME Bank - payouts" in dom and "rendered from the bank's own template" in dom
    assert pages.carried_json["runs"][0]["id"] in dom
    assert "Reconciliation against the ledger and InvestSuite" in dom
    assert "<script" not in dom
