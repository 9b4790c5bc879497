"""The attachment service: Attach, Detach, Get, List, Health, Reconcile,
ExplainPacket, policy updates and convergence, as one object.

A thin facade: each job lives in its own module of this package
(``lifecycle``, ``convergence``, ``policy_apply``, ``intent``, ``gate``,
``health_checks``, ``hosts``, ``explain``) over one shared ``context``;
this class wires them and keeps the service's one public face for the API,
the daemon, the watches and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from coordinator.callers import Caller
from coordinator.config import Config
from coordinator.dataplane_port import DataplanePort
from coordinator.events import EventHub
from coordinator.gateway.policy_book import PolicyBook
from coordinator.health import HealthReport
from coordinator.host_reconcile import Known, ReconcileMode
from coordinator.policy.packet import Packet
from coordinator.policy.scope import Scope
from coordinator.service.context import PolicySource, ServiceContext, ServiceObserver
from coordinator.service.convergence import Convergence, ConvergeReport
from coordinator.service.explain import Explainer, Explanation
from coordinator.service.gate import OperationGate
from coordinator.service.health_checks import ServiceHealth
from coordinator.service.hosts import HostReconcileResult, HostSync
from coordinator.service.lifecycle import AttachParams, Lifecycle
from coordinator.service.policy_apply import PolicyApply
from coordinator.store.records import AttachmentRecord, AttachmentState, PoolStats
from coordinator.store.worker import AsyncStore


class AttachmentService:
    def __init__(
        self,
        *,
        config: Config,
        store: AsyncStore,
        dataplane: DataplanePort,
        network_classes: Mapping[str, Scope],
        events: EventHub,
        mac_salt: str,
    ) -> None:
        self.dataplane = dataplane
        ctx = ServiceContext(
            config=config,
            store=store,
            dataplane=self.dataplane,
            classes=network_classes,
            events=events,
            mac_salt=mac_salt,
        )
        self._ctx = ctx
        self._store = store
        # Each verified sync's flow proof goes with the store's next commit
        # (the apply's own, right after it).
        dataplane.keep_proofs_with(store.carry_flow_proof)
        self._locks = ctx.locks
        self.book: PolicyBook = ctx.book
        self._gate = OperationGate(config.limits.max_attach_qps)
        self._health = ServiceHealth(ctx, self._gate)
        self._lifecycle = Lifecycle(ctx, self._gate, self._health)
        self._convergence = Convergence(ctx, self._gate, self._health)
        self._policy = PolicyApply(ctx, self._gate)
        self._hosts = HostSync(ctx, self._gate, self._lifecycle)
        self._explainer = Explainer(ctx)

    # -- what the daemon plugs in ----------------------------------------------------

    @property
    def policy_source(self) -> PolicySource | None:
        return self._ctx.policy_source

    @policy_source.setter
    def policy_source(self, source: PolicySource | None) -> None:
        self._ctx.policy_source = source

    @property
    def observer(self) -> ServiceObserver:
        return self._ctx.observer

    @observer.setter
    def observer(self, observer: ServiceObserver) -> None:
        self._ctx.observer = observer

    # -- start-up and re-programming ---------------------------------------------

    async def start(self) -> None:
        await self._convergence.start()

    async def device_returned(self, record: AttachmentRecord) -> None:
        await self._lifecycle.device_returned(record)

    async def reconverge(self, reason: str) -> ConvergeReport:
        return await self._convergence.reconverge(reason)

    @property
    def last_converge(self) -> ConvergeReport | None:
        return self._convergence.last

    def mark_switch_lost(self, reason: str) -> None:
        """The switch lost our state or stopped answering: attaches are
        refused (UNAVAILABLE) and Health is degraded until reconverge."""
        self._gate.mark_switch_lost(reason)
        self._health.invalidate()

    async def switch_intact(self) -> str | None:
        return await self._convergence.switch_intact()

    # -- operations in flight ------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        return await self._gate.drain(timeout)

    @property
    def in_flight(self) -> int:
        return self._gate.in_flight

    # -- health ---------------------------------------------------------------

    async def health(self, *, fresh: bool = True) -> HealthReport:
        return await self._health.report(fresh=fresh)

    async def pools(self) -> list[PoolStats]:
        return await self._store.pool_stats()

    # -- attach and detach ----------------------------------------------------------

    async def attach(self, caller: Caller, params: AttachParams) -> AttachmentRecord:
        return await self._lifecycle.attach(caller, params)

    async def detach(self, caller: Caller, attachment_id: str, generation: int) -> bool:
        return await self._lifecycle.detach(caller, attachment_id, generation)

    # -- policy -------------------------------------------------------------------

    async def apply_policy(self, sandbox_id: str, scope: Scope) -> list[AttachmentRecord]:
        return await self._policy.apply_policy(sandbox_id, scope)

    async def apply_latest(self, sandbox_id: str) -> None:
        await self._policy.apply_latest(sandbox_id)

    async def withdraw(
        self, sandbox_ids: Iterable[str], reason: str, message: str, *, keep_baseline: bool
    ) -> int:
        return await self._policy.withdraw(sandbox_ids, reason, message, keep_baseline=keep_baseline)

    async def degrade(self, sandbox_id: str, reason: str, message: str) -> None:
        await self._policy.degrade(sandbox_id, reason, message)

    async def mark_stale(
        self,
        *,
        deny: bool,
        sandbox_ids: Iterable[str] | None = None,
        reason: str = "StreamDown",
        message: str = "policy stream down longer than stale_threshold_ms",
    ) -> int:
        return await self._policy.mark_stale(
            deny=deny, sandbox_ids=sandbox_ids, reason=reason, message=message
        )

    # -- explain and host reconcile ----------------------------------------------------

    async def explain(self, caller: Caller, attachment_id: str, packet: Packet) -> Explanation:
        return await self._explainer.explain(caller, attachment_id, packet)

    async def reconcile_host(
        self, caller: Caller, host_instance_id: str, mode: ReconcileMode, known: Sequence[Known]
    ) -> HostReconcileResult:
        return await self._hosts.reconcile_host(caller, host_instance_id, mode, known)

    async def expire_unreconciled(self) -> list[str]:
        return await self._hosts.expire_unreconciled()

    # -- queries -------------------------------------------------------------------

    async def get(self, caller: Caller, attachment_id: str) -> AttachmentRecord:
        return await self._ctx.visible(caller, attachment_id)

    async def list_all(self) -> list[AttachmentRecord]:
        return await self._store.list_attachments()

    async def list(
        self, caller: Caller, *, sandbox_id: str, host_instance_id: str, state: AttachmentState | None
    ) -> list[AttachmentRecord]:
        owner = None if caller.is_admin else caller.identity
        return await self._store.list_attachments(
            owner=owner, sandbox_id=sandbox_id, host_instance_id=host_instance_id, state=state
        )
