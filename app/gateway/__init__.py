"""The metered call, as a pipeline met once per step, in order:

``call`` (the orchestration) → ``admission`` (refuse a used-up key, read the form
(``form``), claim an ``Idempotency-Key`` (``idempotency``), resolve the model, measure the
audio, ask the ``cache``, hold the expected cost, open the ledger row) →
``forwarding`` (each upstream attempt, with fallbacks, recorded with its outcome) →
``shaping`` / ``streaming`` (the answer as OpenAI sends it) → ``settlement`` (the ledger
row, its attempts and the metrics, settled once; kept in the journal when the database
cannot take it).
"""
