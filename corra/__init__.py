"""corra: run programs and keep them running, as actors under OTP supervision on trio.

This namespace only re-exports; the modules behind it are private.
"""

from corra._errors import ActorError as ActorError
from corra._errors import ActorStopped as ActorStopped
from corra._errors import CallFailed as CallFailed
from corra._errors import ChildRunning as ChildRunning
from corra._errors import ChildStartFailed as ChildStartFailed
from corra._errors import ConfigError as ConfigError
from corra._errors import CorraError as CorraError
from corra._errors import DuplicateChild as DuplicateChild
from corra._errors import MailboxFull as MailboxFull
from corra._errors import NoSuchChild as NoSuchChild
from corra._errors import RestartIntensityExceeded as RestartIntensityExceeded
from corra._errors import SupervisorError as SupervisorError
from corra.actors import BRUTAL_KILL as BRUTAL_KILL
from corra.actors import Actor as Actor
from corra.actors import ActorStatistics as ActorStatistics
from corra.actors import Backoff as Backoff
from corra.actors import ChildCounts as ChildCounts
from corra.actors import ChildInfo as ChildInfo
from corra.actors import ChildSpec as ChildSpec
from corra.actors import Ref as Ref
from corra.actors import Runtime as Runtime
from corra.actors import SupervisorFlags as SupervisorFlags
from corra.actors import SupervisorRef as SupervisorRef
from corra.actors import SupervisorSpec as SupervisorSpec
from corra.actors import SupervisorStatistics as SupervisorStatistics
from corra.actors import TreeNode as TreeNode
from corra.actors import open_runtime as open_runtime

__version__ = "0.1.0"
