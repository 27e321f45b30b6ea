"""corra: run programs and keep them running, as actors under OTP supervision on trio.

This namespace only re-exports; the modules behind it are private.
"""

from corra._errors import ActorError as ActorError
from corra._errors import ActorStopped as ActorStopped
from corra._errors import BackendError as BackendError
from corra._errors import CallFailed as CallFailed
from corra._errors import ChildRunning as ChildRunning
from corra._errors import ChildStartFailed as ChildStartFailed
from corra._errors import ConfigError as ConfigError
from corra._errors import ConnectionFailed as ConnectionFailed
from corra._errors import CorraError as CorraError
from corra._errors import CorruptRecord as CorruptRecord
from corra._errors import DuplicateChild as DuplicateChild
from corra._errors import HostKeyRefused as HostKeyRefused
from corra._errors import HostUnavailable as HostUnavailable
from corra._errors import InvalidTransition as InvalidTransition
from corra._errors import LaunchFailed as LaunchFailed
from corra._errors import MailboxFull as MailboxFull
from corra._errors import NameTaken as NameTaken
from corra._errors import NoSuchChild as NoSuchChild
from corra._errors import NoSuchProcess as NoSuchProcess
from corra._errors import ProcessError as ProcessError
from corra._errors import ProgramLost as ProgramLost
from corra._errors import RemotePathError as RemotePathError
from corra._errors import RestartIntensityExceeded as RestartIntensityExceeded
from corra._errors import StepFailed as StepFailed
from corra._errors import StoreError as StoreError
from corra._errors import SupervisorError as SupervisorError
from corra._errors import TransportError as TransportError
from corra._errors import ValueGone as ValueGone
from corra._errors import WorkflowError as WorkflowError
from corra._runtime import ProcessRef as ProcessRef
from corra._runtime import Runtime as Runtime
from corra._runtime import default_state_dir as default_state_dir
from corra._runtime import open_runtime as open_runtime
from corra.actors import BRUTAL_KILL as BRUTAL_KILL
from corra.actors import Actor as Actor
from corra.actors import ActorStatistics as ActorStatistics
from corra.actors import Backoff as Backoff
from corra.actors import ChildCounts as ChildCounts
from corra.actors import ChildInfo as ChildInfo
from corra.actors import ChildSpec as ChildSpec
from corra.actors import Ref as Ref
from corra.actors import SupervisorFlags as SupervisorFlags
from corra.actors import SupervisorRef as SupervisorRef
from corra.actors import SupervisorSpec as SupervisorSpec
from corra.actors import SupervisorStatistics as SupervisorStatistics
from corra.actors import TreeNode as TreeNode
from corra.processes._convert import parse_process_spec as parse_process_spec
from corra.processes._lifecycle import ProcessState as ProcessState
from corra.processes._lifecycle import Result as Result
from corra.processes._record import ProcessRecord as ProcessRecord
from corra.processes._record import Transition as Transition
from corra.processes._recovery import RecoveryReport as RecoveryReport
from corra.processes._spec import ProcessSpec as ProcessSpec
from corra.processes._values import result_value as result_value
from corra.workflows._python import workflow as workflow

__version__ = "0.1.0"
