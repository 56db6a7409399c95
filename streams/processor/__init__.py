"""The processor: per-session state tables and the SLA watch (rules.py and watch.py are pure; app.py wires the faust
app from its parts: state, agent, handlers, effects, dead_lettering, rebalance, sweeper, output)."""
