cdef class Fields:
    cdef public bint after_head
    cdef public list claims
    cdef public object coding
    cdef public object connection
    cdef public Py_ssize_t count
    cdef public object expect
    cdef public object forwarded_for
    cdef public object forwarded_proto
    cdef public object host
    cdef public Py_ssize_t hosts
    cdef public list keep
    cdef public object length
    cdef public bint rare
    cdef public Py_ssize_t size
    cdef public int status
    cdef public object trailers
    cdef public object upgrade
