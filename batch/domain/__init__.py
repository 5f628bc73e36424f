"""Pure domain: money, portfolio views, the decision policy and the payout state machine. No I/O."""
