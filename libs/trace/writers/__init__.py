"""One module per output format. Tree-based writers (table, collapsed, svg) take a
:class:`~libs.trace.calltree.CallTree`; event-based ones (chrome, speedscope) take the
well-formed event stream and the trace's unit."""
