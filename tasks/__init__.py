"""llmship's units of work: one module or subpackage per stage, each a plain function
that knows nothing of Prefect, with the Prefect wrappers in ``tasks.prefect_tasks``."""
