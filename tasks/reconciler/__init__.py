"""Recovery: the reconciler that republishes what stopped moving, across every feature.

It is the one place that reads every feature's store (messages, codes, campaigns,
webhooks) and publishes their tasks again; no feature imports it, and the workers run it
(:mod:`tasks.workers.reconciler_step`) as beat does (:mod:`tasks.reconciler.tasks`).
"""
