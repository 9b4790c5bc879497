"""The attachment service (see ``facade``) and the parts it is made of."""

from coordinator.service.context import PolicySource, ServiceObserver
from coordinator.service.convergence import ConvergeReport
from coordinator.service.explain import Explanation
from coordinator.service.facade import AttachmentService
from coordinator.service.hosts import HostReconcileResult
from coordinator.service.intent import DENY_ALL_CLASS
from coordinator.service.lifecycle import AttachParams
from coordinator.service.policy_apply import REMOVED_MESSAGE, REMOVED_REASON

__all__ = [
    "DENY_ALL_CLASS",
    "REMOVED_MESSAGE",
    "REMOVED_REASON",
    "AttachParams",
    "AttachmentService",
    "ConvergeReport",
    "Explanation",
    "HostReconcileResult",
    "PolicySource",
    "ServiceObserver",
]
