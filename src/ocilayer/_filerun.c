/*
 * ocilayer._filerun: create a run of new files, symlinks and directories, in C.
 *
 * create_files(data, position, dir_fd, directory, chown, directories) reads tar
 * entries from data[position:] while each is a plain regular file or symlink in
 * `directory`, the entry path of the directory open at `dir_fd`. With `directories`
 * true, it also takes plain directories, and entries in the directories it created.
 * It creates each one with the Python applier's system calls, in the same order:
 *
 *   - a file: an exclusive, non-following create, its data, then owner (when
 *     `chown` is true), mode and times. Some files are created with their own mode:
 *     those without special bits that this process's ids are to own, in a
 *     directory of the process's group (with `chown` false, any file without
 *     special bits). They get owner and mode only where an fstat shows that the
 *     create did not give them. Any other file is created with mode 0600;
 *   - a symlink: symlinkat, then owner (when `chown` is true) and times, neither
 *     following the link;
 *   - a directory: mkdirat with mode 0700, then through a descriptor opened for
 *     reading, owner (when `chown` is true) and mode (with 0700 added when `chown`
 *     is false, as a rootless apply does). Its times are left to the applier, which
 *     sets every directory's times after the last entry.
 *
 * A run goes down into each directory it creates and back up to any directory on
 * the way, at most MAX_DEPTH levels below `directory`. It stops, before the entry,
 * at anything else:
 *
 *   - a header that is not a USTAR header with octal fields and a valid unsigned
 *     checksum, or has another type than '0', '2' or '5', an absolute name, a name
 *     in another directory, a name component that is empty, `.`, `..` or starts
 *     with `.wh.`;
 *   - a symlink with an empty target or a non-zero size field, a directory with a
 *     non-zero size field;
 *   - an entry whose data and padding are not all in `data`, data over MAX_DATA
 *     (256 KiB), or data of at least 4 KiB that is all zeros (the Python applier
 *     writes a hole);
 *   - a name that exists (EEXIST), or any failing system call, after which the file
 *     or directory it created is removed again.
 *
 * The Python applier then takes that entry, with its own checks and error messages.
 * It returns (consumed bytes, groups, data bytes written), where each group is
 * (path relative to `directory`, mode, mtime, names created in it). A group whose
 * mode is -1 is a directory that the run did not create. The loop runs with the GIL
 * released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define BLOCK 512
/* Larger files go to the Python applier, which copies them in chunks. */
#define MAX_DATA (1 << 18)
#define HOLE_SIZE 4096
/* Maximum number of levels a run goes down below its first directory. */
#define MAX_DEPTH 64
/* Maximum length of an entry path in a USTAR header: prefix, slash, name. */
#define MAX_USTAR_PATH 256

typedef struct {
    size_t offset; /* of the name in the arena */
    size_t length;
} Span;

typedef struct {
    Span path;         /* relative to the run's first directory */
    long long mode;    /* -1 for a directory the run did not create */
    long long mtime;
    size_t first_name; /* index of its first name in the names array */
    size_t name_count;
} Group;

/* Parse an octal field the way the Python fast path does: NULs and spaces around
   the digits, at least one digit, nothing else. -1 when it does not. */
static long long
parse_octal(const char *field, size_t width)
{
    size_t start = 0, end = width;
    while (start < end && (field[start] == ' ' || field[start] == 0))
        start++;
    while (end > start && (field[end - 1] == ' ' || field[end - 1] == 0))
        end--;
    if (start == end || end - start > 21)
        return -1;
    long long value = 0;
    for (size_t i = start; i < end; i++) {
        if (field[i] < '0' || field[i] > '7')
            return -1;
        value = value * 8 + (field[i] - '0');
    }
    return value;
}

static size_t
field_length(const char *field, size_t width)
{
    const char *end = memchr(field, 0, width);
    return end == NULL ? width : (size_t)(end - field);
}

static int
all_zero(const unsigned char *data, size_t size)
{
    for (size_t i = 0; i < size; i++)
        if (data[i] != 0)
            return 0;
    return 1;
}

typedef struct {
    char path[MAX_USTAR_PATH + 1]; /* prefix/name, without a directory's final slash */
    size_t path_length;
    size_t parent_length;          /* path[0:parent_length] is the parent directory */
    const char *name;              /* the base name, inside `path` */
    size_t name_length;
    char typeflag;
    long long mode, uid, gid, size, mtime;
} Plain;

/* Return 0 when the header block is a plain file, symlink or directory that C
   takes, wherever it is; the caller checks its parent. */
static int
parse_plain(const unsigned char *block, Plain *out)
{
    const char *text = (const char *)block;
    out->typeflag = (char)block[156];
    if (memcmp(text + 257, "ustar\0" "00", 8) != 0
        || (out->typeflag != '0' && out->typeflag != '2' && out->typeflag != '5'))
        return -1;
    long long checksum = parse_octal(text + 148, 8);
    out->mode = parse_octal(text + 100, 8);
    out->uid = parse_octal(text + 108, 8);
    out->gid = parse_octal(text + 116, 8);
    out->size = parse_octal(text + 124, 12);
    out->mtime = parse_octal(text + 136, 12);
    if (checksum < 0 || out->mode < 0 || out->uid < 0 || out->gid < 0 || out->size < 0
        || out->mtime < 0 || parse_octal(text + 329, 8) < 0 || parse_octal(text + 337, 8) < 0)
        return -1;
    /* The checksum counts its own field as eight spaces. A plain sum over the block,
       corrected afterwards, lets the compiler vectorise the loop. */
    unsigned int sum = 0;
    for (int i = 0; i < BLOCK; i++)
        sum += block[i];
    for (int i = 148; i < 156; i++)
        sum -= block[i];
    sum += 8 * ' ';
    if ((long long)sum != checksum)
        return -1;

    /* The entry path is prefix/name, as the Python reader joins them. */
    size_t name_length = field_length(text, 100);
    size_t prefix_length = field_length(text + 345, 155);
    size_t length = 0;
    if (prefix_length > 0) {
        memcpy(out->path, text + 345, prefix_length);
        out->path[prefix_length] = '/';
        length = prefix_length + 1;
    }
    memcpy(out->path + length, text, name_length);
    length += name_length;
    /* A directory's name ends in one slash, which the reader drops. */
    if (out->typeflag == '5') {
        if (length == 0 || out->path[length - 1] != '/' || out->size != 0)
            return -1;
        length--;
    }
    out->path[length] = 0;
    out->path_length = length;
    /* The reader drops a leading slash. Here `/x` would match the run's first level
       when that is the root, and be reported as `/x`, so the applier takes it. */
    if (length > 0 && out->path[0] == '/')
        return -1;

    size_t base_start = length;
    while (base_start > 0 && out->path[base_start - 1] != '/')
        base_start--;
    size_t parent_length = base_start > 0 ? base_start - 1 : 0;
    const char *base = out->path + base_start;
    size_t base_length = length - base_start;
    if (base_length == 0)
        return -1;
    if (base[0] == '.'
        && (base_length == 1 || (base_length == 2 && base[1] == '.')
            || (base_length >= 4 && memcmp(base, ".wh.", 4) == 0)))
        return -1;
    /* The Python reader skips no data after a symlink, whatever the size field is. */
    if (out->typeflag == '2' && (out->size != 0 || text[157] == 0))
        return -1;
    out->parent_length = parent_length;
    out->name = base;
    out->name_length = base_length;
    return 0;
}

static int
write_all(int fd, const unsigned char *data, size_t size)
{
    while (size > 0) {
        ssize_t written = write(fd, data, size);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += written;
        size -= (size_t)written;
    }
    return 0;
}

/* Create one file; -1 when the Python applier should take the entry (nothing left). */
static int
create_file(int dir_fd, const Plain *entry, const unsigned char *data, int chown_files,
            long long dir_gid)
{
    char name[256];
    memcpy(name, entry->name, entry->name_length);
    name[entry->name_length] = 0;
    mode_t mode = (mode_t)(entry->mode & 07777);
    /* As the Python applier does, a file without special bits that this process's ids
       are to own, in a directory of its group, is created with its mode. (In another
       group's directory, a setgid bit or the grpid mount option would give that group
       the file's group bits until the fchown.) An fstat of what the create made then
       shows whether the umask left anything for fchmod. */
    int with_mode = (mode & 07000) == 0
                    && (!chown_files
                        || ((uid_t)entry->uid == geteuid() && (gid_t)entry->gid == getegid()
                            && dir_gid == entry->gid));
    int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    with_mode ? mode : 0600);
    if (fd < 0)
        return -1;
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = (time_t)entry->mtime;
    times[0].tv_nsec = times[1].tv_nsec = 0;
    int set_owner = chown_files, set_mode = 1;
    struct stat st;
    if (write_all(fd, data, (size_t)entry->size) != 0)
        goto failed;
    if (with_mode) {
        if (fstat(fd, &st) != 0)
            goto failed;
        set_owner = chown_files
                    && (st.st_uid != (uid_t)entry->uid || st.st_gid != (gid_t)entry->gid);
        set_mode = (st.st_mode & 07777) != mode;
    }
    if ((set_owner && fchown(fd, (uid_t)entry->uid, (gid_t)entry->gid) != 0)
        || (set_mode && fchmod(fd, mode) != 0) || futimens(fd, times) != 0)
        goto failed;
    if (close(fd) != 0) {
        unlinkat(dir_fd, name, 0);
        return -1;
    }
    return 0;

failed:
    close(fd);
    unlinkat(dir_fd, name, 0);
    return -1;
}

/* Create one symlink; -1 when the Python applier should take the entry (nothing left). */
static int
create_symlink(int dir_fd, const Plain *entry, const unsigned char *block, int chown_files)
{
    char name[256], target[101];
    memcpy(name, entry->name, entry->name_length);
    name[entry->name_length] = 0;
    size_t target_length = field_length((const char *)block + 157, 100);
    memcpy(target, block + 157, target_length);
    target[target_length] = 0;
    if (symlinkat(target, dir_fd, name) != 0)
        return -1;
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = (time_t)entry->mtime;
    times[0].tv_nsec = times[1].tv_nsec = 0;
    if ((chown_files
         && fchownat(dir_fd, name, (uid_t)entry->uid, (gid_t)entry->gid, AT_SYMLINK_NOFOLLOW)
                != 0)
        || utimensat(dir_fd, name, times, AT_SYMLINK_NOFOLLOW) != 0) {
        unlinkat(dir_fd, name, 0);
        return -1;
    }
    return 0;
}

/* Create one directory and return a descriptor of it. Return -1, leaving nothing,
   when the Python applier should take the entry. */
static int
create_directory(int dir_fd, const Plain *entry, int chown_files)
{
    const char *name = entry->name; /* the end of entry->path, so NUL-terminated */
    if (mkdirat(dir_fd, name, 0700) != 0)
        return -1;
    int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        unlinkat(dir_fd, name, AT_REMOVEDIR);
        return -1;
    }
    mode_t mode = (mode_t)(entry->mode & 07777) | (chown_files ? 0 : 0700);
    if ((chown_files && fchown(fd, (uid_t)entry->uid, (gid_t)entry->gid) != 0)
        || fchmod(fd, mode) != 0) {
        close(fd);
        unlinkat(dir_fd, name, AT_REMOVEDIR);
        return -1;
    }
    return fd;
}

/* The run's state: the directories it is in, and what it created, for the result. */
typedef struct {
    /* path[0:lengths[i]] is the entry path of the directory at level i, and fds[i]
       is its descriptor. Level 0 is the run's first directory, whose fd is the
       caller's. */
    char path[PATH_MAX + MAX_USTAR_PATH + 2];
    size_t lengths[MAX_DEPTH + 1];
    int fds[MAX_DEPTH + 1];
    /* The group of the directory at each level, or -1 when unknown. */
    long long gids[MAX_DEPTH + 1];
    int depth;
    Group *groups;
    size_t group_count, group_capacity;
    Span *names;
    size_t name_count, name_capacity;
    char *arena;
    size_t arena_used, arena_capacity;
} Run;

static int
grow(void **array, size_t *capacity, size_t item_size, size_t needed)
{
    if (needed <= *capacity)
        return 0;
    size_t grown = *capacity ? *capacity : 64;
    while (grown < needed)
        grown *= 2;
    void *moved = realloc(*array, grown * item_size);
    if (moved == NULL)
        return -1;
    *array = moved;
    *capacity = grown;
    return 0;
}

/* Copy `length` bytes to the arena, which the caller made room in. */
static Span
keep(Run *run, const char *text, size_t length)
{
    Span span = {run->arena_used, length};
    memcpy(run->arena + run->arena_used, text, length);
    run->arena_used += length;
    return span;
}

/* Start a group for the directory at `level`, in arrays the caller made room in. */
static void
start_group(Run *run, int level, long long mode, long long mtime)
{
    size_t base = run->lengths[0] + (run->lengths[0] > 0);
    size_t end = run->lengths[level];
    Group *group = &run->groups[run->group_count];
    group->path = keep(run, run->path + base, end > base ? end - base : 0);
    group->mode = mode;
    group->mtime = mtime;
    group->first_name = run->name_count;
    group->name_count = 0;
    run->group_count++;
}

/* Return the level whose directory is the entry's parent, or -1 for none. */
static int
find_level(const Run *run, const Plain *entry)
{
    for (int level = run->depth; level >= 0; level--) {
        if (run->lengths[level] == entry->parent_length
            && memcmp(run->path, entry->path, entry->parent_length) == 0)
            return level;
    }
    return -1;
}

static PyObject *
run_result(Run *run, size_t consumed, long long written)
{
    PyObject *groups = PyList_New((Py_ssize_t)run->group_count);
    for (size_t i = 0; groups != NULL && i < run->group_count; i++) {
        const Group *group = &run->groups[i];
        PyObject *names = PyList_New((Py_ssize_t)group->name_count);
        for (size_t j = 0; names != NULL && j < group->name_count; j++) {
            const Span *name = &run->names[group->first_name + j];
            PyObject *item = PyBytes_FromStringAndSize(run->arena + name->offset,
                                                       (Py_ssize_t)name->length);
            if (item == NULL)
                Py_CLEAR(names);
            else
                PyList_SET_ITEM(names, (Py_ssize_t)j, item);
        }
        PyObject *item = names == NULL ? NULL
                                       : Py_BuildValue("(y#LLN)", run->arena + group->path.offset,
                                                       (Py_ssize_t)group->path.length,
                                                       group->mode, group->mtime, names);
        if (item == NULL)
            Py_CLEAR(groups);
        else
            PyList_SET_ITEM(groups, (Py_ssize_t)i, item);
    }
    if (groups == NULL)
        return NULL;
    return Py_BuildValue("(nNL)", (Py_ssize_t)consumed, groups, written);
}

static PyObject *
create_files(PyObject *Py_UNUSED(module), PyObject *args)
{
    /* Any buffer: the reader passes a view of its own reusable buffer. The GIL is
       released during the loop, so each header is copied before it is checked and
       its name is taken from that copy: a buffer changed by another thread could
       change file data, never a checked name. */
    Py_buffer buffer;
    Py_ssize_t position;
    int dir_fd, chown_files, directories;
    const char *directory;
    Py_ssize_t directory_length;
    if (!PyArg_ParseTuple(args, "y*niy#pp", &buffer, &position, &dir_fd, &directory,
                          &directory_length, &chown_files, &directories))
        return NULL;
    if (position < 0 || position > buffer.len) {
        PyBuffer_Release(&buffer);
        PyErr_Format(PyExc_ValueError, "position %zd is outside the buffer of %zd bytes",
                     position, buffer.len);
        return NULL;
    }
    if (directory_length >= PATH_MAX) {
        PyBuffer_Release(&buffer);
        PyErr_Format(PyExc_ValueError, "directory path of %zd bytes is too long: "
                     "a path has at most %d", directory_length, PATH_MAX - 1);
        return NULL;
    }
    Run *run = calloc(1, sizeof(Run));
    if (run == NULL) {
        PyBuffer_Release(&buffer);
        return PyErr_NoMemory();
    }
    memcpy(run->path, directory, (size_t)directory_length);
    run->lengths[0] = (size_t)directory_length;
    run->fds[0] = dir_fd;
    struct stat directory_stat;
    run->gids[0] = fstat(dir_fd, &directory_stat) == 0 ? (long long)directory_stat.st_gid : -1;
    const unsigned char *data = (const unsigned char *)buffer.buf;
    size_t length = (size_t)buffer.len;
    size_t offset = (size_t)position;
    long long written = 0;
    int group_level = -1;

    Py_BEGIN_ALLOW_THREADS
    unsigned char header[BLOCK];
    Plain entry;
    while (length - offset >= BLOCK) {
        memcpy(header, data + offset, BLOCK);
        if (parse_plain(header, &entry) != 0)
            break;
        int level = find_level(run, &entry);
        if (level < 0 || (entry.typeflag == '5' && (!directories || level == MAX_DEPTH)))
            break;
        size_t size = (size_t)entry.size;
        size_t padded = size + (BLOCK - size % BLOCK) % BLOCK;
        if (entry.size > MAX_DATA || length - offset - BLOCK < padded)
            break;
        const unsigned char *content = data + offset + BLOCK;
        if (size >= HOLE_SIZE && all_zero(content, size))
            break;
        /* Room for a name and a group with its path first, so that nothing created
           goes unreported. */
        if (grow((void **)&run->names, &run->name_capacity, sizeof(Span), run->name_count + 1)
            || grow((void **)&run->groups, &run->group_capacity, sizeof(Group),
                    run->group_count + 1)
            || grow((void **)&run->arena, &run->arena_capacity, 1,
                    run->arena_used + MAX_USTAR_PATH + entry.name_length))
            break;
        /* Leave the directories below the entry's. */
        while (run->depth > level) {
            close(run->fds[run->depth]);
            run->depth--;
        }
        int fd = run->fds[level];
        if (entry.typeflag == '5') {
            int created = create_directory(fd, &entry, chown_files);
            if (created < 0)
                break;
            run->depth = level + 1;
            run->fds[run->depth] = created;
            run->gids[run->depth] = chown_files ? entry.gid : -1;
            run->lengths[run->depth] = entry.path_length;
            memcpy(run->path, entry.path, entry.path_length);
            start_group(run, run->depth, entry.mode & 07777, entry.mtime);
            group_level = run->depth;
        } else {
            int failed = entry.typeflag == '2' ? create_symlink(fd, &entry, header, chown_files)
                                               : create_file(fd, &entry, content, chown_files,
                                                             run->gids[level]);
            if (failed)
                break;
            if (group_level != level) {
                start_group(run, level, -1, 0);
                group_level = level;
            }
            run->names[run->name_count] = keep(run, entry.name, entry.name_length);
            run->name_count++;
            run->groups[run->group_count - 1].name_count++;
            written += entry.size;
        }
        offset += BLOCK + padded;
    }
    while (run->depth > 0) {
        close(run->fds[run->depth]);
        run->depth--;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buffer);

    PyObject *result = run_result(run, offset - (size_t)position, written);
    free(run->groups);
    free(run->names);
    free(run->arena);
    free(run);
    return result;
}

static PyObject *
starts_run(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer buffer;
    Py_ssize_t position;
    const char *directory;
    Py_ssize_t directory_length;
    int directories;
    if (!PyArg_ParseTuple(args, "y*ny#p", &buffer, &position, &directory, &directory_length,
                          &directories))
        return NULL;
    int starts = 0;
    if (position >= 0 && buffer.len - position >= BLOCK) {
        unsigned char header[BLOCK];
        Plain entry;
        memcpy(header, (const unsigned char *)buffer.buf + position, BLOCK);
        starts = parse_plain(header, &entry) == 0 && (directories || entry.typeflag != '5')
                 && entry.parent_length == (size_t)directory_length
                 && memcmp(entry.path, directory, (size_t)directory_length) == 0;
    }
    PyBuffer_Release(&buffer);
    return PyBool_FromLong(starts);
}

static PyMethodDef filerun_methods[] = {
    {"starts_run", starts_run, METH_VARARGS,
     PyDoc_STR("starts_run(data, position, directory, directories) -> bool\n\n"
               "Whether the header at data[position:] is one that create_files takes.")},
    {"create_files", create_files, METH_VARARGS,
     PyDoc_STR("create_files(data, position, dir_fd, directory, chown, directories) -> "
               "(consumed, groups, data_bytes)\n\n"
               "Create the run of plain files, symlinks and, with `directories`, "
               "directories that starts at data[position:].")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef filerun_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ocilayer._filerun",
    .m_doc = PyDoc_STR("Create a run of new files, symlinks and directories, in C."),
    .m_size = -1,
    .m_methods = filerun_methods,
};

PyMODINIT_FUNC
PyInit__filerun(void)
{
    PyObject *module = PyModule_Create(&filerun_module);
    if (module != NULL
        && (PyModule_AddIntConstant(module, "MAX_DATA", MAX_DATA) < 0
            || PyModule_AddIntConstant(module, "MAX_DEPTH", MAX_DEPTH) < 0))
        Py_CLEAR(module);
    return module;
}
