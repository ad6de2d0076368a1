/**
 * What the virtual-clock driver tests share: the agent's tick counts (RAFT_DEFAULTS) as a core
 * config, and a state machine that keeps nothing.
 */
import { RAFT_DEFAULTS } from '../../src/node/agent/defaults.ts'
import type { StateMachine } from '../../src/raft/state-machine.ts'

export const agentRaftConfig = {
  electionTick: RAFT_DEFAULTS.electionTick,
  heartbeatTick: RAFT_DEFAULTS.heartbeatTick,
  learnerHeartbeatTick: RAFT_DEFAULTS.learnerHeartbeatTick,
  idleHeartbeatTick: RAFT_DEFAULTS.idleHeartbeatTick,
}

export const nullStateMachine: StateMachine<unknown> = {
  apply: () => undefined,
  snapshot: () => new Uint8Array(),
  restore: () => {},
}
