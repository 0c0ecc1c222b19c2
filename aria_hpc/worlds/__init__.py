"""Embedded worlds: the procedurally rendered shapes world, its teacher recipe and judge."""
