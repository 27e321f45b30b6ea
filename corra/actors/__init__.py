"""The actor kernel: actors with bounded mailboxes, refs, OTP supervisors, the runtime root."""

from corra.actors._actor import Actor as Actor
from corra.actors._actor import ActorStatistics as ActorStatistics
from corra.actors._actor import Ref as Ref
from corra.actors._runtime import Runtime as Runtime
from corra.actors._runtime import open_runtime as open_runtime
from corra.actors._specs import BRUTAL_KILL as BRUTAL_KILL
from corra.actors._specs import Backoff as Backoff
from corra.actors._specs import ChildSpec as ChildSpec
from corra.actors._specs import SupervisorFlags as SupervisorFlags
from corra.actors._specs import SupervisorSpec as SupervisorSpec
from corra.actors._supervisor import ChildCounts as ChildCounts
from corra.actors._supervisor import ChildInfo as ChildInfo
from corra.actors._supervisor import SupervisorRef as SupervisorRef
from corra.actors._supervisor import SupervisorStatistics as SupervisorStatistics
from corra.actors._supervisor import TreeNode as TreeNode
