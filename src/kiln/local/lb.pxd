# Cython's augmenting declarations for lb.py (see http1.pxd).
from kiln.local.metrics cimport Counters
from kiln.local.proxy cimport Client
from kiln.local.upstream cimport Upstream
from kiln.local.http1 cimport Request


cdef class Backend:
    cdef public Counters counters
    cdef public double down_until
    cdef public double draining_since
    cdef public str host
    cdef public str id
    cdef public list idle
    cdef public Py_ssize_t outstanding
    cdef public int port
    cdef public bint routable
    cdef public set tunnels


cdef class Balancer:
    cdef public str fleet
    cdef public str policy
    cdef public object limits
    cdef public tuple trusted
    cdef public dict backends
    cdef public list routable
    cdef public Counters totals
    cdef public Py_ssize_t retries
    cdef public Py_ssize_t unavailable
    cdef public object listen
    cdef public object _server
    cdef public set clients
    cdef public dict waiting
    cdef public object _sweeper
    cdef public Py_ssize_t _rr
    cdef public object sticky
    cdef dict __dict__

    cpdef pump(self, Client client)
    cpdef bint _fast(self, Request head, Client client)
    cpdef fast_end(self, Upstream upstream, Client client, error)
    cpdef Backend _pick(self, tuple tried)


cpdef Upstream _pooled(Backend backend)
