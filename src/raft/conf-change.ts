import { ConfChangeError } from './errors.ts'
import type { ConfChange, ConfState, NodeId } from './types.ts'

const TYPES = new Set(['addVoter', 'removeVoter', 'addLearner', 'promoteLearner'])
const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** Conf entries hold a small JSON object: deterministic and readable in a log dump. */
export function encodeConfChange(cc: ConfChange): Uint8Array {
  return encoder.encode(JSON.stringify({ type: cc.type, node: cc.node }))
}

/** Returns undefined for bytes that are not a valid change (such an entry changes nothing). */
export function decodeConfChange(data: Uint8Array): ConfChange | undefined {
  try {
    const v: unknown = JSON.parse(decoder.decode(data))
    if (typeof v !== 'object' || v === null) return undefined
    const { type, node } = v as Record<string, unknown>
    if (typeof type !== 'string' || !TYPES.has(type) || typeof node !== 'string' || node.length === 0) {
      return undefined
    }
    return { type: type as ConfChange['type'], node }
  } catch {
    return undefined
  }
}

export function isVoter(conf: ConfState, id: NodeId): boolean {
  return conf.voters.includes(id)
}

export function isMember(conf: ConfState, id: NodeId): boolean {
  return conf.voters.includes(id) || conf.learners.includes(id)
}

const sorted = (ids: Iterable<NodeId>) => [...ids].sort()

/** Applies one single-server change (thesis §4.1) or throws ConfChangeError if it makes no sense. */
export function applyConfChange(conf: ConfState, cc: ConfChange): ConfState {
  const voters = new Set(conf.voters)
  const learners = new Set(conf.learners)
  switch (cc.type) {
    case 'addVoter':
      if (voters.has(cc.node)) throw new ConfChangeError(`${cc.node} is already a voter`)
      if (learners.has(cc.node)) throw new ConfChangeError(`${cc.node} is a learner; promote it instead`)
      voters.add(cc.node)
      break
    case 'addLearner':
      if (voters.has(cc.node) || learners.has(cc.node))
        throw new ConfChangeError(`${cc.node} is already a member`)
      learners.add(cc.node)
      break
    case 'promoteLearner':
      if (!learners.has(cc.node)) throw new ConfChangeError(`${cc.node} is not a learner`)
      learners.delete(cc.node)
      voters.add(cc.node)
      break
    case 'removeVoter':
      if (voters.has(cc.node)) {
        if (voters.size === 1) throw new ConfChangeError('cannot remove the last voter')
        voters.delete(cc.node)
      } else if (learners.has(cc.node)) {
        learners.delete(cc.node)
      } else {
        throw new ConfChangeError(`${cc.node} is not a member`)
      }
      break
  }
  return { voters: sorted(voters), learners: sorted(learners) }
}
