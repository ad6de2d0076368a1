import type { Message } from '../../src/raft/types.ts'

/** A Raft message for tests: `type` plus whatever the test cares about; the rest zero/empty. */
export function raftMessage(p: Partial<Message> & Pick<Message, 'type'>): Message {
  return {
    from: 'a',
    to: 'b',
    term: 1,
    logTerm: 0,
    index: 0,
    commit: 0,
    entries: [],
    reject: false,
    rejectHint: 0,
    context: '',
    ...p,
  }
}
