# Cython's augmenting declarations for http1.py (pure-Python mode): when this
# module is compiled, these classes are extension types with typed fields.
# The .py file is the one source; run uncompiled, it is plain Python.
# Compile with the directive annotation_typing=False: the types declared in
# .pxd files are the only ones Cython uses (the .py annotations are for mypy;
# read by Cython, `status: int` would clash with `int status` here).
cimport cython


cdef class Request:
    cdef public bytes method
    cdef public bytes target
    cdef public bytes version
    cdef public object host
    cdef public bytes fields
    cdef public bint chunked
    cdef public object length
    cdef public bint close
    cdef public object upgrade
    cdef public bint expect
    cdef public object forwarded_for
    cdef public object forwarded_proto
    cdef public tuple claims
    cdef public object affinity

    cpdef reframe(self, length)


cdef class Response:
    cdef public int status
    cdef public bytes reason
    cdef public bytes version
    cdef public bytes fields
    cdef public bint chunked
    cdef public object length
    cdef public bint close
    cdef public object upgrade


cdef int KEEP, HOST, LENGTH, CODING, CONNECTION, UPGRADE, EXPECT, XFF, XFP, CLAIM, IMPOSTOR, PROXY_CONN
cdef Py_ssize_t _FIELDS_LIMIT, _HEAD_LIMIT
cdef list _SPELLINGS
cdef bint COMPILED
cdef bytearray _SPELLING_KINDS

@cython.locals(end=Py_ssize_t)
cdef bytes _trimmed(bytes value)

@cython.locals(number="long long", c="unsigned char")
cdef object _digits(bytes value)


cdef class Fields:
    cdef public bint after_head
    cdef public list claims
    cdef public object coding
    cdef public object connection
    cdef public Py_ssize_t count
    cdef public object expect
    cdef public object forwarded_for
    cdef public object forwarded_proto
    cdef public bytes good_host
    cdef public object host
    cdef public Py_ssize_t hosts
    cdef public list keep
    cdef public object length
    cdef public bint rare
    cdef public Py_ssize_t size
    cdef public int status
    cdef public object trailers
    cdef public object upgrade

    cpdef reset(self)
    @cython.locals(kind=int, slot=Py_ssize_t, common=dict, end=Py_ssize_t)
    cpdef add(self, bytes name, bytes value)
    cpdef bytes end_head(self)


@cython.locals(keep=bytes, ver=bytes, host=object, good=set)
cpdef Request make_request(bytes method, bytes target, str version, Fields f)


cpdef bytes request_head(Request req, bytes forwarded)

@cython.locals(req=Request)
cdef Request _plain_request(bytes method, bytes target, bytes version, object host, bytes fields, object length, bint close)
@cython.locals(resp=Response)
cdef Response _plain_response(int status, bytes reason, bytes version, bytes fields, object length, bint close)

@cython.locals(lines=dict, line=bytes)
cpdef bytes length_line(object length)

cpdef bytes response_head(Response resp, bytes framing, bint keep_alive)

@cython.locals(ver=bytes, keep=bytes, reasons=frozenset)
cpdef Response make_response(int status, bytes reason, str version, Fields f)

cpdef bint _closes(bytes version, object connection)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, c=int)
cdef bint _origin(bytes target)
