# Cython's augmenting declarations for lb.py (see http1.pxd).
cimport cython
from kiln.local.backend cimport Backend
from kiln.local.metrics cimport Counters
from kiln.local.proxy cimport Client
from kiln.local.upstream cimport Upstream
from kiln.local.http1 cimport Request, request_head


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
    cdef public bint retiring
    cdef dict __dict__

    cpdef pump(self, Client client)
    @cython.locals(backend=Backend, upstream=Upstream, pieces=Py_ssize_t, size=Py_ssize_t, started=double)
    cpdef bint _fast(self, Request head, Client client)
    @cython.locals(backend=Backend)
    cpdef fast_end(self, Upstream upstream, Client client, error)
    @cython.locals(backend=Backend, best=Backend, suspect=Backend, n=Py_ssize_t, start=Py_ssize_t, best_load=Py_ssize_t, load=Py_ssize_t, i=Py_ssize_t)
    cpdef Backend _pick(self, tuple tried)


@cython.locals(upstream=Upstream)
cpdef Upstream _pooled(Backend backend)
