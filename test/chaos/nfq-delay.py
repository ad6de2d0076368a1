#!/usr/bin/env python3
"""Delays every packet of an NFQUEUE queue by DELAY_MS +- JITTER_MS (uniform), then accepts it.

The kernel of the chaos hosts has no netem, so the chaos suite sends each namespace's outgoing
packets to a queue (`iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num N --queue-bypass`) and this
process, started inside the same namespace, holds each one and gives the verdict NF_ACCEPT once its
delay is over. Standard library only: it speaks nfnetlink_queue over a raw netlink socket (no
libnetfilter_queue binding is packaged for this distribution).

usage: nfq-delay.py QUEUE_NUM DELAY_MS JITTER_MS
Prints "ready" on stdout once bound; exits on SIGTERM/SIGINT or when stdin closes.
"""
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_PF_BIND = 3
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
AF_INET = 2


def nla(kind, payload):
    n = 4 + len(payload)
    return struct.pack('=HH', n, kind) + payload + b'\0' * ((4 - n % 4) % 4)


class Queue:
    def __init__(self, num):
        self.num = num
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))

    def send(self, msg_type, res_id, attrs, flags=NLM_F_REQUEST):
        self.seq += 1
        body = struct.pack('=BBH', socket.AF_UNSPEC, 0, socket.htons(res_id)) + b''.join(attrs)
        hdr = struct.pack('=IHHII', 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, self.seq, 0)
        self.sock.send(hdr + body)

    def config(self, res_id, attrs):
        self.send(NFQNL_MSG_CONFIG, res_id, attrs, NLM_F_REQUEST | NLM_F_ACK)
        data = self.sock.recv(65536)
        _, t, _, _, _ = struct.unpack_from('=IHHII', data, 0)
        if t == NLMSG_ERROR:
            (err,) = struct.unpack_from('=i', data, 16)
            if err != 0:
                raise OSError(-err, os.strerror(-err))

    def bind(self):
        # PF_BIND is a no-op on kernels >= 3.8 but harmless.
        try:
            self.config(0, [nla(NFQA_CFG_CMD, struct.pack('=BBH', NFQNL_CFG_CMD_PF_BIND, 0, socket.htons(AF_INET)))])
        except OSError:
            pass
        self.config(self.num, [nla(NFQA_CFG_CMD, struct.pack('=BBH', NFQNL_CFG_CMD_BIND, 0, socket.htons(AF_INET)))])
        self.config(self.num, [nla(NFQA_CFG_PARAMS, struct.pack('>IB', 0, NFQNL_COPY_META))])
        self.config(self.num, [nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack('>I', 10000))])

    def packet_ids(self, data):
        """Packet ids of the NFQNL_MSG_PACKET messages in one recv()."""
        off = 0
        out = []
        while off + 16 <= len(data):
            n, t, _, _, _ = struct.unpack_from('=IHHII', data, off)
            if n < 16:
                break
            if t == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20
                end = off + n
                while a + 4 <= end:
                    alen, akind = struct.unpack_from('=HH', data, a)
                    if alen < 4:
                        break
                    if (akind & 0x7FFF) == NFQA_PACKET_HDR:
                        (pid,) = struct.unpack_from('>I', data, a + 4)
                        out.append(pid)
                    a += (alen + 3) & ~3
            off += (n + 3) & ~3
        return out

    def accept(self, pid):
        self.send(NFQNL_MSG_VERDICT, self.num, [nla(NFQA_VERDICT_HDR, struct.pack('>II', NF_ACCEPT, pid))])


def main():
    num, delay, jitter = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    q = Queue(num)
    q.bind()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print('ready', flush=True)
    held = []  # heap of (release time, tie, packet id)
    tie = 0
    poller = select.poll()
    poller.register(q.sock, select.POLLIN)
    poller.register(sys.stdin, select.POLLIN | select.POLLHUP)
    while not stop:
        now = time.monotonic()
        while held and held[0][0] <= now:
            q.accept(heapq.heappop(held)[2])
        wait = max(0, int((held[0][0] - now) * 1000) + 1) if held else 200
        for fd, ev in poller.poll(wait):
            if fd == q.sock.fileno():
                try:
                    data = q.sock.recv(1 << 20)
                except OSError:
                    continue  # ENOBUFS: the kernel dropped some (bypass does not apply); go on
                now = time.monotonic()
                for pid in q.packet_ids(data):
                    d = max(0.0, delay + random.uniform(-jitter, jitter)) / 1000.0
                    tie += 1
                    heapq.heappush(held, (now + d, tie, pid))
            else:
                if ev & (select.POLLHUP | select.POLLERR) or not os.read(sys.stdin.fileno(), 4096):
                    stop.append(1)
    # Release whatever is still held, so nothing waits for a verdict that never comes.
    for _, _, pid in held:
        q.accept(pid)


if __name__ == '__main__':
    main()
