"""The one error tree of the job.

    BatchError
    ├── ConfigError                 broken or missing configuration (exit code 2)
    │   └── CredentialsError        InvestSuite refused the login, or wants one and none is configured
    ├── UsageError                  an operator's input refused before anything is recorded (exit code 2)
    ├── RunLockedError              another run holds the run lock (exit code 75)
    ├── FenceLostError              this run's lease was taken over: it may change nothing more (exit code 1)
    ├── AuditChainBrokenError       the audit hash chain does not verify: no money moves (exit code 1)
    ├── TransientError              worth retrying: the same call may succeed later
    │   ├── RemoteTransientError    InvestSuite: connect error, timeout, 429, 5xx
    │   └── DatabaseUnavailableError  a PostgreSQL database unreachable (named by host:port/dbname)
    │       └── LedgerUnavailableError  core banking ledger unreachable
    ├── PermanentError              retrying the same call will not help
    │   ├── RemotePermanentError    InvestSuite: 4xx other than 401/429
    │   │   └── NotFoundError       404
    │   ├── PayloadError            a response that does not match the documented shape
    │   ├── LedgerConflictError     an idempotency key reused with a different payout
    │   └── LedgerAccountError      a customer's ledger account missing, of the wrong kind or currency
    └── DomainError                 a business rule said no
        ├── InsufficientFundsError  the ledger's available cash is short at posting time
        ├── InvalidAmountError      negative, NaN, non-numeric or absurd amount
        ├── UnknownCurrencyError    not an ISO 4217 code we know the minor unit of
        ├── InvalidRemoteDataError  InvestSuite data a write would have to carry is not writable as it is
        ├── InvalidTransitionError  a payout state change lost a race or is not allowed
        └── OperatorRefusedError    an operator's action refused: who acts, the reason, the four-eyes rule

Adapters translate driver and HTTP errors into this tree with ``raise ... from exc``;
the service layer only ever catches these.
"""

from __future__ import annotations


class BatchError(Exception):
    """Base of every error the job raises on purpose."""


class ConfigError(BatchError):
    """Configuration is missing, malformed or inconsistent."""


class CredentialsError(ConfigError):
    """InvestSuite refused the configured credentials, or asked for some and none are configured.

    Retrying cannot help (exit code 2); the message says which case it is, never the secret."""


class UsageError(BatchError):
    """An operator's input refused before anything is recorded: a date outside the run window, an unknown
    portfolio, a limit out of range, an output folder that does not exist (exit code 2, one line)."""


class RunLockedError(BatchError):
    """Another run holds the run lock."""


class FenceLostError(BatchError):
    """This run's lease was taken over (or the run was marked ABANDONED): the journal refuses its writes."""


class AuditChainBrokenError(BatchError):
    """The audit hash chain does not verify (a run stops before it resumes or plans anything)."""


class TransientError(BatchError):
    """A failure that may go away if the same call is retried later."""

    retry_after: float | None = None


class RemoteTransientError(TransientError):
    """InvestSuite did not answer usefully: connect error, timeout, 429 or 5xx."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class DatabaseUnavailableError(TransientError):
    """A PostgreSQL database could not be reached (the message names host:port/dbname and the cause)."""


class LedgerUnavailableError(DatabaseUnavailableError):
    """The core banking ledger could not be reached."""


class PermanentError(BatchError):
    """A failure that retrying the same call will not cure."""


class RemotePermanentError(PermanentError):
    """InvestSuite refused the request (4xx other than 401/429)."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class NotFoundError(RemotePermanentError):
    """InvestSuite answered 404 for the entity."""


class PayloadError(PermanentError):
    """A payload does not have the documented shape (HTML instead of JSON, missing fields, ...)."""


class LedgerConflictError(PermanentError):
    """A ledger idempotency key was reused for a different payout."""


class LedgerAccountError(PermanentError):
    """The customer's ledger account is missing, of the wrong kind, or in another currency."""


class DomainError(BatchError):
    """A business rule refused the operation."""


class InsufficientFundsError(DomainError):
    """The account's available balance is below the payout amount."""

    def __init__(self, message: str, *, available: object = None, requested: object = None) -> None:
        super().__init__(message)
        self.available = available
        self.requested = requested


class InvalidAmountError(DomainError):
    """An amount is negative, not a number, or absurd."""


class UnknownCurrencyError(DomainError):
    """A currency code we do not know the minor unit of."""


class InvalidRemoteDataError(DomainError):
    """A value read from InvestSuite cannot go back into a write the docs' strictest reading accepts.

    ``field`` names it the way the API would (``portfolio.IE00BK5BQT80``, ``config.manager``).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidTransitionError(DomainError):
    """A payout state transition is not allowed or lost a race against another writer."""


class OperatorRefusedError(DomainError):
    """An operator's action was refused: not an operator's login role, a blank reason, or the same role twice."""
