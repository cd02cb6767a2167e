# Cython's augmenting declarations for backend.py (see http1.pxd).
from kiln.local.metrics cimport Counters


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
    cdef public dict streams
    cdef public set tunnels
