"""The reconciler: EnableX's Server API (archive and CDR routes) against the webhook log.

EnableX documents no retry policy for its webhooks, so one can be lost for good. The reconciler asks the
Server API what EnableX holds per session (:mod:`.client`), asks ClickHouse which webhooks reached the log
(:mod:`.log`), compares the two (:mod:`.compare`, pure) and produces each finding once to
``<prefix>reconcile.v1`` (:mod:`.run`), remembering how far it has come in a cursor file (:mod:`.cursor`).
"""
