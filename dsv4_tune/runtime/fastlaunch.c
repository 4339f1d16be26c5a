/* The patch-and-launch step of dsv4_tune.kernels.cuda_launch.DirectLaunch, in C.
 *
 * Built at first use by fastlaunch.py (plain C: no CUDA or torch headers; the driver's
 * cuLaunchKernel comes in as an address, or cuLaunchKernelEx for a programmatic dependent launch:
 * pdl=1, the launch attribute CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION set, as
 * Triton's own launcher does for a kernel compiled with launch_pdl).  A Launch owns its kernel parameters, one 8-byte slot each
 * (the last two are Triton's null scratch pointers), and the void* array cuLaunchKernel reads them
 * through.  launch(stream, ptrs) writes ptrs[j] into slot k for each (k, j) of its patch list and
 * calls the driver, returning the CUresult; launch_all does that for a tuple of Launches in one
 * call.  Patch and launch run holding the GIL with no Python code in between (the addresses must be
 * ints: no __index__ runs), which is what keeps two threads replaying one launch from launching
 * with each other's addresses: no lock is needed.  A free-threaded build
 * would need a mutex per Launch, so this file refuses to build there and the ctypes path (which
 * locks) stays in use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#ifdef Py_GIL_DISABLED
#error "fastlaunch relies on the GIL to make patch + launch atomic; free-threaded builds keep the ctypes path"
#endif

typedef int (*launch_fn)(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                         unsigned shared, void *stream, void **params, void **extra);

/* The driver's CUlaunchAttribute and CUlaunchConfig (cuda.h, CUDA 12), laid out the same. */
typedef struct {
    int id; /* CUlaunchAttributeID */
    char pad[4];
    union {
        char bytes[64];           /* CUlaunchAttributeValue */
        unsigned long long align; /* its 8-byte alignment */
        int allowed;              /* .programmaticStreamSerializationAllowed */
    } value;
} LaunchAttribute;

typedef struct {
    unsigned grid_x, grid_y, grid_z, block_x, block_y, block_z, shared;
    void *stream;
    LaunchAttribute *attrs;
    unsigned num_attrs;
} LaunchConfig;

typedef int (*launch_ex_fn)(const LaunchConfig *config, void *f, void **params, void **extra);

#define PROGRAMMATIC_STREAM_SERIALIZATION 6 /* CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION */

typedef struct {
    Py_ssize_t slot, index;
} Patch;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    launch_fn fn; /* cuLaunchKernel, or cuLaunchKernelEx (a launch_ex_fn) when pdl */
    int pdl;
    void *function;
    unsigned dims[7]; /* grid x, y, z, block x, y, z, shared bytes */
    Py_ssize_t nslots, npatch;
    uint64_t *values; /* nslots slots, then nslots params pointing at them, then the patches */
    void **params;
    Patch *patch;
} Launch;

static PyTypeObject LaunchType;

static int as_u64(PyObject *o, uint64_t *out, const char *what) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLongMask(o); /* negative: two's complement, as ctypes */
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Patch and launch; -1 with a Python error set, else 0 with the CUresult in *err. */
static int run(Launch *self, void *stream, PyObject *const *ptrs, Py_ssize_t n, int *err) {
    for (Py_ssize_t i = 0; i < self->npatch; i++) {
        Py_ssize_t j = self->patch[i].index;
        if (j >= n) {
            PyErr_Format(PyExc_IndexError, "launch reads input %zd of %zd", j, n);
            return -1;
        }
        if (as_u64(ptrs[j], &self->values[self->patch[i].slot], "an input address") < 0)
            return -1;
    }
    const unsigned *d = self->dims;
    if (self->pdl) {
        LaunchAttribute attr = {.id = PROGRAMMATIC_STREAM_SERIALIZATION};
        attr.value.allowed = 1;
        LaunchConfig config = {d[0], d[1], d[2], d[3], d[4], d[5], d[6], stream, &attr, 1};
        *err = ((launch_ex_fn)(void *)self->fn)(&config, self->function, self->params, NULL);
        return 0;
    }
    *err = self->fn(self->function, d[0], d[1], d[2], d[3], d[4], d[5], d[6], stream, self->params, NULL);
    return 0;
}

/* A call's stream (an int, None for the null stream) into *stream, and its input addresses as a new
 * reference to a list or tuple (PySequence_Fast); NULL with an error set. */
static PyObject *call_args(PyObject *stream_in, PyObject *ptrs_in, void **stream) {
    uint64_t v = 0;
    if (stream_in != Py_None && as_u64(stream_in, &v, "stream") < 0)
        return NULL;
    *stream = (void *)(uintptr_t)v;
    return PySequence_Fast(ptrs_in, "ptrs must be a list or tuple of ints");
}

static PyObject *Launch_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Launch takes (stream, ptrs)");
        return NULL;
    }
    void *stream;
    PyObject *seq = call_args(args[0], args[1], &stream);
    if (seq == NULL)
        return NULL;
    int err = 0;
    int rc = run((Launch *)op, stream, PySequence_Fast_ITEMS(seq), PySequence_Fast_GET_SIZE(seq), &err);
    Py_DECREF(seq);
    return rc < 0 ? NULL : PyLong_FromLong(err);
}

static void Launch_dealloc(PyObject *op) {
    PyMem_Free(((Launch *)op)->values);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *Launch_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"fn", "function", "dims", "values", "patch", "pdl", NULL};
    unsigned long long fn, function;
    unsigned d[7];
    PyObject *values_in, *patch_in;
    int pdl = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KK(IIIIIII)OO|p:Launch", names, &fn, &function, &d[0], &d[1],
                                     &d[2], &d[3], &d[4], &d[5], &d[6], &values_in, &patch_in, &pdl))
        return NULL;
    if (fn == 0) {
        PyErr_SetString(PyExc_ValueError, pdl ? "Launch needs the address of cuLaunchKernelEx"
                                              : "Launch needs the address of cuLaunchKernel");
        return NULL;
    }
    PyObject *values = PySequence_Fast(values_in, "values must be a sequence of ints");
    if (values == NULL)
        return NULL;
    PyObject *patch = PySequence_Fast(patch_in, "patch must be a sequence of (slot, input) pairs");
    if (patch == NULL) {
        Py_DECREF(values);
        return NULL;
    }
    Launch *self = (Launch *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto fail;
    self->vectorcall = Launch_vectorcall;
    self->fn = (launch_fn)(uintptr_t)fn;
    self->pdl = pdl;
    self->function = (void *)(uintptr_t)function;
    for (int i = 0; i < 7; i++)
        self->dims[i] = d[i];
    Py_ssize_t n = self->nslots = PySequence_Fast_GET_SIZE(values);
    Py_ssize_t np = self->npatch = PySequence_Fast_GET_SIZE(patch);
    self->values = PyMem_Malloc(n * sizeof(uint64_t) + n * sizeof(void *) + np * sizeof(Patch));
    if (self->values == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->params = (void **)(self->values + n);
    self->patch = (Patch *)(self->params + n);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(values, i));
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            goto fail;
        self->values[i] = (uint64_t)v;
        self->params[i] = &self->values[i];
    }
    for (Py_ssize_t i = 0; i < np; i++) {
        Py_ssize_t slot, index;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(patch, i), "nn:patch", &slot, &index))
            goto fail;
        if (slot < 0 || slot >= n || index < 0) {
            PyErr_Format(PyExc_ValueError, "patch (%zd, %zd) out of range (%zd slots)", slot, index, n);
            goto fail;
        }
        self->patch[i].slot = slot;
        self->patch[i].index = index;
    }
    Py_DECREF(values);
    Py_DECREF(patch);
    return (PyObject *)self;
fail:
    Py_DECREF(values);
    Py_DECREF(patch);
    Py_XDECREF(self);
    return NULL;
}

static PyTypeObject LaunchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsv4_tune.kernels._fastlaunch.Launch",
    .tp_doc = "Launch(fn, function, dims, values, patch, pdl=False): one kernel launch with packed parameters\n"
              "(fn: cuLaunchKernel, or cuLaunchKernelEx with pdl); call it as launch(stream, ptrs) -> CUresult.",
    .tp_basicsize = sizeof(Launch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = Launch_new,
    .tp_dealloc = Launch_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Launch, vectorcall),
};

/* launch_all(launches, stream, ptrs, start=0): launches[start:] in order; None when all launched,
 * else (index, CUresult) of the first that failed (the rest not launched). */
static PyObject *launch_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs < 3 || nargs > 4 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "launch_all takes (launches: tuple, stream, ptrs, start=0)");
        return NULL;
    }
    Py_ssize_t start = 0;
    if (nargs == 4 && (start = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    void *stream;
    PyObject *seq = call_args(args[1], args[2], &stream);
    if (seq == NULL)
        return NULL;
    PyObject *const *ptrs = PySequence_Fast_ITEMS(seq);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), count = PyTuple_GET_SIZE(args[0]);
    PyObject *result = NULL;
    for (Py_ssize_t i = start < 0 ? 0 : start; i < count; i++) {
        PyObject *launch = PyTuple_GET_ITEM(args[0], i);
        int err = 0;
        if (!PyObject_TypeCheck(launch, &LaunchType)) {
            PyErr_Format(PyExc_TypeError, "launch_all: item %zd is not a Launch", i);
            goto out;
        }
        if (run((Launch *)launch, stream, ptrs, n, &err) < 0)
            goto out;
        if (err != 0) {
            result = Py_BuildValue("(ni)", i, err);
            goto out;
        }
    }
    result = Py_NewRef(Py_None);
out:
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"launch_all", (PyCFunction)(void (*)(void))launch_all, METH_FASTCALL,
     "launch_all(launches, stream, ptrs, start=0) -> None or (index, CUresult) of the first failed launch"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastlaunch",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastlaunch(void) {
    if (PyType_Ready(&LaunchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddType(m, &LaunchType) < 0)
        Py_CLEAR(m);
    return m;
}
