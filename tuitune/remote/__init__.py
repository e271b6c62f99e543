"""Runs that outlive the terminal: the run process, its control socket, and the clients that attach to it.

No Textual and no torch at import. `host` runs in the run process beside the engine (the engine itself knows
nothing of it: the server is one more event sink and one more source of commands on the engine's `Control`);
`spawn` starts that process detached from the terminal; `client` is what a dashboard (or a script) attaches with;
`runs` reads run directories back (live / finished / dead) for `tuitune runs` and `tuitune attach`.
"""
