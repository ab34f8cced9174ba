"""The pipeline of a run: the plan (planner), the estimate, the run loop (loop) and its stream of requests to the
teachers, what requests cost (cost) and the spend cap that holds them (spendcap), progress, and calling from a thread
that runs an event loop (threads)."""
