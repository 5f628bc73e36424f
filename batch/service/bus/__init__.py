"""The bus listener: the consumer loop (``listener``), what one event does (``events``), and the triggers
it starts on the same engine as the night (``withdrawal``, ``deposits``)."""
