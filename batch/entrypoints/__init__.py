"""Entry points: the `batch` command, the resident scheduler, scale-out workers and the demo."""
