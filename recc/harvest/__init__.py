"""The harvester: find every cluster RECC manages, decide which are idle, expired, unreachable
or orphaned, and remove them completely, never touching one that works or that RECC did not
create.

observe (per backend: records, tags, labels, the scheduler's own answer) -> decide (pure) ->
reap (under a per-cluster lock, through the same teardown as ``recc down``) -> audit.
"""
