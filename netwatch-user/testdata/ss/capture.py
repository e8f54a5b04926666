"""Capture the ss fixtures in this directory (run as root on a Linux host).

    python3 capture.py 'py fixture' 'a,b "c" (d' 'ü网 x' 'x",pid=9,fd=1)' $'nl\nname' $'tab\tname' ' lead space' ''

Forks one process per name (prctl PR_SET_NAME sets its comm), each holding
loopback sockets; the first holds IPv4/IPv6/IPv4-mapped/link-local TCP pairs
with known byte counts (12345 out / 678 back, 1, 100, 4096), UDP sockets
(bound, connected, device-bound, dual-stack), a TIME-WAIT and a CLOSE-WAIT;
the second forks a child sharing its sockets. Then it writes `ss -tunapi` and
`ss -tunapie` output to /tmp/ssfix/ss_tunapi.txt and ss_tunapie.txt, which were
copied here as tunapi-loopback.txt and tunapie-loopback.txt. The link-local
pair assumes eth0 has fe80::fc:ff:fe00:1 (edit for another host). Sockets of
other processes on the host at capture time are part of the output as well.
"""
import socket, os, ctypes, time, subprocess, sys
libc = ctypes.CDLL(None)
def setname(n):
    b = n.encode()[:15]
    libc.prctl(15, ctypes.c_char_p(b), 0, 0, 0)

def tcp_pair(fam, host, nbytes_ab, nbytes_ba):
    l = socket.socket(fam, socket.SOCK_STREAM); l.bind((host, 0)); l.listen(8)
    c = socket.socket(fam, socket.SOCK_STREAM); c.connect(l.getsockname()[:2])
    s, _ = l.accept()
    if nbytes_ab: c.sendall(b'a'*nbytes_ab); got=0
    while nbytes_ab and got < nbytes_ab: got += len(s.recv(1<<20))
    if nbytes_ba: s.sendall(b'b'*nbytes_ba); got=0
    while nbytes_ba and got < nbytes_ba: got += len(c.recv(1<<20))
    return [l, c, s]

pids = []
names = sys.argv[1:]
for i, name in enumerate(names):
    pid = os.fork()
    if pid == 0:
        setname(name)
        socks = []
        if i == 0:
            socks += tcp_pair(socket.AF_INET, '127.0.0.1', 12345, 678)
            socks += tcp_pair(socket.AF_INET6, '::1', 1, 0)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0)); socks.append(u)
            u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(('::', 0)); socks.append(u6)
            uc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); uc.connect(u.getsockname()); uc.send(b'xyz'); socks.append(uc)
            d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'lo'); d.bind(('0.0.0.0', 0)); socks.append(d)
            d6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); d6.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'lo'); d6.bind(('::', 0)); d6.listen(1); socks.append(d6)
            # dual-stack listener and v4-mapped connection
            ds = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); ds.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); ds.bind(('::', 0)); ds.listen(4); socks.append(ds)
            mc = socket.socket(socket.AF_INET, socket.SOCK_STREAM); mc.connect(('127.0.0.1', ds.getsockname()[1])); ms,_ = ds.accept(); socks += [mc, ms]
            mc.sendall(b'q'*100); ms.recv(100)
            # TIME_WAIT: the client closes first, so its end waits
            tw = tcp_pair(socket.AF_INET, '127.0.0.1', 5, 0); tw[1].close(); time.sleep(0.05); tw[2].close(); socks.append(tw[0])
            # CLOSE_WAIT: peer closes, we don't
            cw = tcp_pair(socket.AF_INET, '127.0.0.1', 0, 0); cw[1].close(); socks += [cw[0], cw[2]]
            ll = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); ll.bind(('fe80::fc:ff:fe00:1', 0, 0, socket.if_nametoindex('eth0'))); ll.listen(1)
            lc = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); lc.connect(ll.getsockname()); la,_ = ll.accept(); lc.sendall(b'L'*4096); la.recv(4096); socks += [ll, lc, la]
            u6c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6c.connect(('::1', u6.getsockname()[1])); socks.append(u6c)
        else:
            socks += tcp_pair(socket.AF_INET, '127.0.0.1', 7, 0)
            if i == 1:  # a child sharing this process's sockets
                p2 = os.fork()
                if p2 == 0:
                    setname("shared child")
                    time.sleep(3); os._exit(0)
        time.sleep(3); os._exit(0)
    pids.append(pid)
time.sleep(1)
for args, fn in ((['-tunapi'], 'ss_tunapi.txt'), (['-tunapie'], 'ss_tunapie.txt')):
    out = subprocess.run(['ss'] + args, capture_output=True).stdout
    os.makedirs('/tmp/ssfix', exist_ok=True); open('/tmp/ssfix/' + fn, 'wb').write(out)
for p in pids: os.waitpid(p, 0)
