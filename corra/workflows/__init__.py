"""Workflows: named jobs of steps, each step a process (see docs/workflows.md).

`parse_jobs` validates the ``[[job]]`` tables of a job file into `JobDefinition` values; the
rest are the pure functions a run applies to a definition. The ``${...}`` language is
`corra.workflows._expressions`'. ``@workflow`` makes an ``async def`` a job
(`corra.workflows._python`), run and replayed by `corra.workflows._replay`.
"""

from corra.workflows._definition import JobDefinition as JobDefinition
from corra.workflows._definition import StepDefinition as StepDefinition
from corra.workflows._definition import apply_params as apply_params
from corra.workflows._definition import job_data as job_data
from corra.workflows._definition import job_from_data as job_from_data
from corra.workflows._definition import job_result as job_result
from corra.workflows._definition import result_step as result_step
from corra.workflows._definition import step_items as step_items
from corra.workflows._definition import step_runs as step_runs
from corra.workflows._definition import step_spec as step_spec
from corra.workflows._definition import topological_order as topological_order
from corra.workflows._definition import upstream as upstream
from corra.workflows._expressions import Template as Template
from corra.workflows._expressions import parse_template as parse_template
from corra.workflows._loading import merge_defaults as merge_defaults
from corra.workflows._loading import parse_jobs as parse_jobs
from corra.workflows._manager import WorkflowManager as WorkflowManager
from corra.workflows._python import PythonJob as PythonJob
from corra.workflows._python import StepResult as StepResult
from corra.workflows._python import workflow as workflow
from corra.workflows._query import RunQuery as RunQuery
from corra.workflows._query import shown_job as shown_job
from corra.workflows._replay import StepContext as StepContext
from corra.workflows._runs import RunRecord as RunRecord
from corra.workflows._runs import StepEntry as StepEntry
