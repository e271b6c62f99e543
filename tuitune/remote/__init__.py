"""The live side of runs that outlive the terminal: the run process, its control socket, and the clients that
attach to it.

No Textual and no torch at import. `host` runs in the run process beside the engine (the engine itself knows
nothing of it: the server is one more event sink and one more source of commands on the engine's `Control`);
`server` and `protocol` are that socket and what goes over it; `spawn` starts that process detached from the
terminal; `client` is what a dashboard (or a script) attaches with. Reading run directories back (live / finished /
dead, `tuitune runs`, `tuitune compare`) is `tuitune.runs`, which never imports this package.
"""
