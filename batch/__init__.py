"""Nightly withdrawal payout job beside InvestSuite's Robo Advisor."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("investsuite-payout-batch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
