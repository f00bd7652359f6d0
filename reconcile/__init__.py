"""The reconciler: one level-triggered pass that makes the platform match the pods.

snapshot (list both sides) → diff (pure judgement) → batch (many repairs at once, the
shutdown order) of repair (re-read, conditional write) → report (table for on-call, JSON
for automation). `reconcile.app.run_reconcile` runs one pass for `sniffer reconcile`.
"""
