"""What the service layer is given: the settings and the adapters, built by the composition root.

``batch.bootstrap.App`` satisfies this protocol; the service layer never imports the bootstrap, so
anything with these attributes (a test's fakes included) can run a job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sqlalchemy.engine import Engine

from batch.adapters.investsuite import InvestSuiteClient
from batch.adapters.journal import Journal
from batch.adapters.ledger import Ledger
from batch.adapters.ledger_bank_payouts import BankPayoutLedger
from batch.adapters.ledger_deposits import DepositLedger
from batch.adapters.ledger_reads import LedgerReader
from batch.domain.flow import Flow
from batch.domain.payout import FlowKind
from batch.domain.ports import Ports
from batch.settings import Settings


class Services(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def client(self) -> InvestSuiteClient: ...

    @property
    def journal_engine(self) -> Engine: ...

    @property
    def ledger_engine(self) -> Engine: ...

    @property
    def deposit_ledger(self) -> DepositLedger: ...

    @property
    def bank_payouts(self) -> BankPayoutLedger: ...

    @property
    def ports(self) -> Ports: ...

    @property
    def flows(self) -> Mapping[FlowKind, Flow]: ...

    @property
    def ledger_reader(self) -> LedgerReader: ...
