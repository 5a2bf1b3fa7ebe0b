/* The GPD refit of SPOT (beamlytics/detectors/spot.py), compiled.
 *
 * The pure-Python path in spot.py spends most of a refit on numpy call overhead: about five
 * passes of a few hundred excesses, each pass half a dozen ufunc calls. Here each pass is one
 * loop. The arithmetic is spot.py's and libspot 3.1.0's, operation by operation: every sum a
 * running sum in buffer order, 1 + x*e rounded before its log (setup.py compiles this file
 * with -ffp-contract=off so no fused multiply-add changes a bit), the same Brent steps and the
 * same choices between estimators. IEEE arithmetic gives what spot.py's C-arithmetic helpers
 * emulate (division by zero, log of zero or of a negative number).
 *
 * fit(values, total, total_sq, minimum, maximum) -> (gamma, sigma)
 *   values: the stored excesses in buffer order, a C-contiguous float64 buffer;
 *   the four numbers: the running statistics the circular buffer keeps beside them.
 *
 * extend(buffer, values, cursor, filled, total, total_sq, minimum, maximum)
 *     -> (cursor, filled, total, total_sq, minimum, maximum)
 *   spot.py's `_Excesses.push` of each of `values` in turn, writing into `buffer` (the circular
 *   buffer's float64 array): SPOT's fit pushes every excess of a pool (about a thousand), each
 *   overwrite of the minimum or maximum a full recompute of the buffer's sums.
 *
 * p2_quantile(p, values) -> the P² estimate of spot.py's `_p2_quantile_python`, the same
 *   comparisons and float operations in its order: a sequential pass that numpy cannot batch,
 *   run on every population pool (50,000 values each) when a run fits its prior.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define BRENT_EPSILON 2.0e-8
#define BRENT_MAX_ITERATIONS 200

typedef struct {
    const double *values;
    Py_ssize_t size;
    double total;
    double total_sq;
    double minimum;
    double maximum;
} Excesses;

typedef struct {
    double gamma;
    double sigma;
    double likelihood;
} Fit;

static double mean(const Excesses *excesses) { return excesses->total / (double)excesses->size; }

/* start + sum of factor * log(1 + x * e), added in buffer order after start */
static double sum_log_one_plus(const Excesses *excesses, double x, double start, double factor) {
    double sum = start;
    for (Py_ssize_t i = 0; i < excesses->size; ++i) {
        double term = log(1.0 + x * excesses->values[i]);
        sum += factor == 1.0 ? term : term * factor;
    }
    return sum;
}

static double log_likelihood(const Excesses *excesses, double gamma, double sigma) {
    double size = (double)excesses->size;
    if (gamma == 0.0) {
        return -size * log(sigma) - excesses->total / sigma;
    }
    double shape = 1.0 + 1.0 / gamma;
    return sum_log_one_plus(excesses, gamma / sigma, -size * log(sigma), -shape);
}

static Fit method_of_moments(const Excesses *excesses) {
    double m = mean(excesses);
    double variance = excesses->total_sq / (double)excesses->size - m * m;
    double ratio = m * m / variance;
    Fit fit;
    fit.gamma = 0.5 * (1.0 - ratio);
    fit.sigma = 0.5 * m * (1.0 + ratio);
    fit.likelihood = log_likelihood(excesses, fit.gamma, fit.sigma);
    return fit;
}

/* Grimshaw's function of x = gamma / sigma, whose roots are the likelihood's stationary points */
static double grimshaw_w(const Excesses *excesses, double x) {
    double inverse_sum = 0.0;
    double log_sum = 0.0;
    for (Py_ssize_t i = 0; i < excesses->size; ++i) {
        double scaled = 1.0 + x * excesses->values[i];
        inverse_sum += 1.0 / scaled;
        log_sum += log(scaled);
    }
    double count = (double)excesses->size;
    return (inverse_sum / count) * (1.0 + log_sum / count) - 1.0;
}

static int same_strict_sign(double a, double b) {
    return (a > 0.0 && b > 0.0) || (a < 0.0 && b < 0.0);
}

/* A root of w in [a, b] (Numerical Recipes' Brent, as libspot); 0 when none is found */
static int brent(const Excesses *excesses, double a, double b, double *root) {
    double fa = grimshaw_w(excesses, a);
    double fb = grimshaw_w(excesses, b);
    if (same_strict_sign(fa, fb)) {
        return 0;
    }
    double c = b, fc = fb, d = 0.0, e = 0.0;
    for (int iteration = 0; iteration < BRENT_MAX_ITERATIONS; ++iteration) {
        if (same_strict_sign(fb, fc)) {
            c = a;
            fc = fa;
            e = d = b - a;
        }
        if (fabs(fc) < fabs(fb)) {
            a = b;
            b = c;
            c = a;
            fa = fb;
            fb = fc;
            fc = fa;
        }
        double bound = 2.0 * BRENT_EPSILON * fabs(b) + 0.5 * BRENT_EPSILON;
        double middle = 0.5 * (c - b);
        if (fabs(middle) <= bound || fb == 0.0) {
            *root = b;
            return 1;
        }
        if (fabs(e) >= bound && fabs(fa) > fabs(fb)) {
            double s = fb / fa, p, q;
            if (a == c) {
                p = 2.0 * middle * s;
                q = 1.0 - s;
            } else {
                double r;
                q = fa / fc;
                r = fb / fc;
                p = s * (2.0 * middle * q * (q - r) - (b - a) * (r - 1.0));
                q = (q - 1.0) * (r - 1.0) * (s - 1.0);
            }
            if (p > 0.0) {
                q = -q;
            }
            p = fabs(p);
            double limit_interpolation = 3.0 * middle * q - fabs(bound * q);
            double limit_previous = fabs(e * q);
            double limit = limit_interpolation < limit_previous ? limit_interpolation : limit_previous;
            if (2.0 * p < limit) {
                e = d;
                d = p / q;
            } else {
                d = e = middle;
            }
        } else {
            d = e = middle;
        }
        a = b;
        fa = fb;
        b = b + (fabs(d) > bound ? d : (middle >= 0.0 ? fabs(bound) : -fabs(bound)));
        fb = grimshaw_w(excesses, b);
    }
    return 0;
}

static Fit grimshaw_candidate(const Excesses *excesses, double x) {
    Fit fit;
    if (x == 0.0) {
        fit.gamma = 0.0;
        fit.sigma = mean(excesses);
    } else {
        fit.gamma = (1.0 + sum_log_one_plus(excesses, x, 0.0, 1.0) / (double)excesses->size) - 1.0;
        fit.sigma = fit.gamma / x;
    }
    fit.likelihood = log_likelihood(excesses, fit.gamma, fit.sigma);
    return fit;
}

static Fit grimshaw(const Excesses *excesses) {
    if (excesses->size == 0) {
        Fit none = {0.0, NAN, NAN};
        return none;
    }
    double half_over_max = 0.5 / excesses->maximum;
    double epsilon = isnan(half_over_max) ? NAN
                     : (half_over_max < BRENT_EPSILON ? half_over_max : BRENT_EPSILON);
    double m = mean(excesses);
    double roots[2];
    int found[2];
    found[0] = brent(excesses, -1.0 / excesses->maximum + epsilon, -epsilon, &roots[0]);
    found[1] = brent(excesses, epsilon,
                     2.0 * (m - excesses->minimum) / (excesses->minimum * excesses->minimum), &roots[1]);
    Fit best = grimshaw_candidate(excesses, 0.0);
    for (int k = 0; k < 2; ++k) {
        if (found[k]) {
            Fit fitted = grimshaw_candidate(excesses, roots[k]);
            if (fitted.likelihood > best.likelihood) {
                best = fitted;
            }
        }
    }
    return best;
}

/* A C-contiguous float64 view of `object`; on failure the error is set and nothing is held. */
static int float64_view(PyObject *object, Py_buffer *view, int flags) {
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | flags) < 0) {
        return -1;
    }
    if (view->itemsize != sizeof(double) || view->format == NULL || strcmp(view->format, "d") != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "values must be a contiguous float64 buffer");
        return -1;
    }
    return 0;
}

static PyObject *fit(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fit(values, total, total_sq, minimum, maximum)");
        return NULL;
    }
    Py_buffer view;
    if (float64_view(args[0], &view, 0) < 0) {
        return NULL;
    }
    Excesses excesses;
    excesses.values = (const double *)view.buf;
    excesses.size = view.len / (Py_ssize_t)sizeof(double);
    excesses.total = PyFloat_AsDouble(args[1]);
    excesses.total_sq = PyFloat_AsDouble(args[2]);
    excesses.minimum = PyFloat_AsDouble(args[3]);
    excesses.maximum = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Fit best = method_of_moments(&excesses);
    Fit other = grimshaw(&excesses);
    /* the first estimator unless its likelihood is undefined or the second's is higher */
    if (isnan(best.likelihood) || other.likelihood > best.likelihood) {
        best = other;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(dd)", best.gamma, best.sigma);
}

/* spot.py's _Excesses._recompute: running sums in buffer order, from the first value */
static void recompute(const double *values, Py_ssize_t size, double *total, double *total_sq, double *minimum,
                      double *maximum) {
    double sum = values[0], sum_sq = values[0] * values[0], low = values[0], high = values[0];
    for (Py_ssize_t i = 1; i < size; i++) {
        double v = values[i];
        sum += v;
        sum_sq += v * v;
        if (v < low) low = v;
        if (v > high) high = v;
    }
    *total = sum;
    *total_sq = sum_sq;
    *minimum = low;
    *maximum = high;
}

static PyObject *extend(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "extend(buffer, values, cursor, filled, total, total_sq, minimum, maximum)");
        return NULL;
    }
    Py_buffer buffer_view, values_view;
    if (float64_view(args[0], &buffer_view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (float64_view(args[1], &values_view, 0) < 0) {
        PyBuffer_Release(&buffer_view);
        return NULL;
    }
    Py_ssize_t capacity = buffer_view.len / (Py_ssize_t)sizeof(double);
    Py_ssize_t cursor = PyLong_AsSsize_t(args[2]);
    int filled = PyObject_IsTrue(args[3]);
    double total = PyFloat_AsDouble(args[4]), total_sq = PyFloat_AsDouble(args[5]);
    double minimum = PyFloat_AsDouble(args[6]), maximum = PyFloat_AsDouble(args[7]);
    if (capacity < 1 || cursor < 0 || cursor >= capacity || PyErr_Occurred()) {
        PyBuffer_Release(&buffer_view);
        PyBuffer_Release(&values_view);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "a cursor inside the buffer");
        }
        return NULL;
    }
    double *buffer = (double *)buffer_view.buf;
    const double *values = (const double *)values_view.buf;
    Py_ssize_t count = values_view.len / (Py_ssize_t)sizeof(double);
    for (Py_ssize_t index = 0; index < count; index++) {
        double x = values[index];
        double overwritten = filled ? buffer[cursor] : NAN;
        buffer[cursor] = x;
        if (++cursor == capacity) {
            cursor = 0;
            filled = 1;
        }
        total += x;
        total_sq += x * x;
        int first = (filled ? capacity : cursor) == 1;
        if (first || x < minimum) minimum = x;
        if (first || x > maximum) maximum = x;
        if (overwritten == overwritten) {
            total -= overwritten;
            total_sq -= overwritten * overwritten;
            if (overwritten <= minimum || overwritten >= maximum) {
                recompute(buffer, filled ? capacity : cursor, &total, &total_sq, &minimum, &maximum);
            }
        }
    }
    PyBuffer_Release(&buffer_view);
    PyBuffer_Release(&values_view);
    return Py_BuildValue("(nNdddd)", cursor, PyBool_FromLong(filled), total, total_sq, minimum, maximum);
}

/* spot.py's _p2_cell: the cell x falls in; an x outside all cells becomes an end marker */
static int p2_cell(double *heights, double x) {
    if (x < heights[0]) {
        heights[0] = x;
        return 0;
    }
    if (x > heights[4]) {
        heights[4] = x;
        return 3;
    }
    int cell = 1;
    while (x > heights[cell]) {
        cell++;
    }
    return cell - 1;
}

/* spot.py's _p2_adjust: move marker i one position towards where it should be */
static void p2_adjust(double *h, double *n, int i, double drift) {
    if (!((drift >= 1.0 && n[i + 1] - n[i] > 1.0) || (drift <= -1.0 && n[i - 1] - n[i] < -1.0))) {
        return;
    }
    int d = drift > 0 ? 1 : -1;
    double height = h[i] + ((double)d / (n[i + 1] - n[i - 1])) *
        ((n[i] - n[i - 1] + d) * (h[i + 1] - h[i]) / (n[i + 1] - n[i])
         + (n[i + 1] - n[i] - d) * (h[i] - h[i - 1]) / (n[i] - n[i - 1]));
    if (!(h[i - 1] < height && height < h[i + 1])) {
        height = h[i] + d * (h[i + d] - h[i]) / (n[i + d] - n[i]);
    }
    h[i] = height;
    n[i] += d;
}

static PyObject *p2_quantile(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "p2_quantile(p, values)");
        return NULL;
    }
    double p = PyFloat_AsDouble(args[0]);
    if (p == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (float64_view(args[1], &view, 0) < 0) {
        return NULL;
    }
    const double *values = (const double *)view.buf;
    Py_ssize_t size = view.len / (Py_ssize_t)sizeof(double);
    if (size < 5) {
        PyBuffer_Release(&view);
        return PyFloat_FromDouble(NAN);
    }
    double heights[5];
    for (int k = 0; k < 5; k++) { /* a stable insertion sort, as Python's sorted() of five */
        int j = k;
        while (j > 0 && values[k] < heights[j - 1]) {
            heights[j] = heights[j - 1];
            j--;
        }
        heights[j] = values[k];
    }
    double positions[5] = {0.0, 1.0, 2.0, 3.0, 4.0};
    double desired[5] = {0.0, 2.0 * p, 4.0 * p, 2.0 + 2.0 * p, 4.0};
    double increments[5] = {0.0, p / 2.0, p, (p + 1.0) / 2.0, 1.0};
    for (Py_ssize_t index = 5; index < size; index++) {
        int cell = p2_cell(heights, values[index]);
        for (int i = cell + 1; i < 5; i++) {
            positions[i] += 1.0;
        }
        for (int i = 1; i < 4; i++) {
            desired[i] += increments[i];
        }
        for (int i = 1; i < 4; i++) {
            p2_adjust(heights, positions, i, desired[i] - positions[i]);
        }
    }
    PyBuffer_Release(&view);
    return PyFloat_FromDouble(heights[2]);
}

static PyMethodDef methods[] = {
    {"fit", (PyCFunction)(void (*)(void))fit, METH_FASTCALL,
     "fit(values, total, total_sq, minimum, maximum) -> (gamma, sigma): SPOT's GPD refit."},
    {"extend", (PyCFunction)(void (*)(void))extend, METH_FASTCALL,
     "extend(buffer, values, cursor, filled, total, total_sq, minimum, maximum): _Excesses.push of each value."},
    {"p2_quantile", (PyCFunction)(void (*)(void))p2_quantile, METH_FASTCALL,
     "p2_quantile(p, values) -> the P² estimate of the p-quantile of a float64 buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "_gpd", "SPOT's GPD refit and P² quantile, compiled (see spot.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__gpd(void) { return PyModule_Create(&module_definition); }
