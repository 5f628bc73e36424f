"""The step engine: drives every flow's claimed operations exactly once through their steps (``steps``),
against the journal as a port (``ports``); ``seams`` is the crash tests' seam, inert unless they enable it."""
