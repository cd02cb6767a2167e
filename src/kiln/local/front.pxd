# Cython's augmenting declarations for front.py (see http1.pxd).
cimport cython
from kiln.local.lb cimport Balancer
from kiln.local.proxy cimport Client
from kiln.local.http1 cimport Request


cdef class Front(Balancer):
    cdef public object routes
    cdef public Py_ssize_t unrouted
    cdef public object sni
    cdef public dict certs
    cdef public object acme

    @cython.locals(target=Balancer)
    cpdef bint _fast(self, Request head, Client client)
