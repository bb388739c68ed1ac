/*
 * pgwasm: fresh random numbers in sessions that a VM snapshot saved.
 *
 * Every VM restored from one state resumes the same backends with the same
 * generator states: random() draws from a PRNG seeded once per session, and
 * gen_random_uuid() (pg_strong_random) from OpenSSL's DRBGs, which reseed
 * from the kernel only after a fork, a time interval or a number of calls.
 * The guest agent reseeds the kernel first after every restore
 * (add_entropy); then it adds one to the generation counter in the file
 * pgwasm.reseed_file. The postmaster maps that file before it forks, so
 * every backend sees the counter with one memory read, and before each
 * statement a backend whose last seen generation differs reseeds (reseed()).
 * Nothing is reconnected or restarted, so a session keeps its state
 * (temporary tables, settings, an open transaction) and a restore costs no
 * time. docs/vm.md, "Random numbers after a restore", has the measurements
 * and the trade-offs.
 */
#include "postgres.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "common/pg_prng.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* pgwasm.reseed_file: the generation counter's file on a tmpfs. */
static char *reseed_file = NULL;

/* The counter, mapped read-only and shared with the agent's writes. */
static const volatile uint32 *generation = NULL;

/* The generation this process's random state is as fresh as. */
static uint32 seen = 0;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/*
 * reseed gives this process new random state from the kernel, which the
 * agent has just reseeded with the host's entropy.
 */
static void
reseed(void)
{
	uint64		bits;

	/*
	 * OpenSSL 3 reseeds its primary DRBG from the kernel (getrandom); the
	 * per-thread public and private DRBGs that RAND_bytes uses see the
	 * primary's reseed counter change and reseed from it on their next
	 * draw. TestSavedSessionsRandom checks gen_random_uuid() after it.
	 */
	if (RAND_poll() != 1)
		ereport(WARNING,
				(errmsg("pgwasm: could not reseed OpenSSL's random generator after a restore")));

	/*
	 * PostgreSQL's own generator for internal choices (TABLESAMPLE without
	 * REPEATABLE and the like).
	 */
	if (!pg_prng_strong_seed(&pg_global_prng_state))
		ereport(WARNING,
				(errmsg("pgwasm: could not reseed PostgreSQL's random generator after a restore")));

	/*
	 * random() and friends keep their state private to the server; setseed
	 * is the only way in. It takes a double in [-1, 1] and keeps 53 bits of
	 * it: plenty for a generator that is not cryptographic anyway. A seed a
	 * user set with setseed() is replaced, as after any restore.
	 */
	if (pg_strong_random(&bits, sizeof(bits)))
	{
		double		seed = (double) (bits >> 11) / (double) (UINT64CONST(1) << 52) - 1.0;

		DirectFunctionCall1(setseed, Float8GetDatum(seed));
	}
	else
		ereport(WARNING,
				(errmsg("pgwasm: could not reseed random() after a restore")));
}

/* check reseeds when the agent has bumped the generation since last time. */
static inline void
check(void)
{
	uint32		g;

	if (generation == NULL)
		return;
	g = *generation;
	if (likely(g == seen))
		return;
	/* First, so that an error in reseed() cannot repeat on every statement. */
	seen = g;
	reseed();
}

/*
 * Every statement a client sends starts either the executor (queries, DML,
 * prepared statements at Bind) or ProcessUtility (DO, CALL, COPY, EXPLAIN,
 * transaction control...); calls nested in either come after the check.
 */
static void
pgwasm_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	check();
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
pgwasm_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					  bool readOnlyTree, ProcessUtilityContext context,
					  ParamListInfo params, QueryEnvironment *queryEnv,
					  DestReceiver *dest, QueryCompletion *qc)
{
	check();
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/*
 * at_fork_child runs in every process the postmaster forks, before it draws
 * any random state: OpenSSL reseeds after a fork and PostgreSQL seeds its
 * generators at process start, all from the kernel as it is now, which the
 * agent reseeded before it wrote the generation read here. Without this a
 * backend would inherit the postmaster's generation from its start, and
 * every new session after a restore would reseed again (4 ms in v86).
 */
static void
at_fork_child(void)
{
	seen = *generation;
}

/*
 * map_counter maps the counter file, creating it when needed. A server that
 * cannot (the image build's own start, where /run/postgresql is not
 * PostgreSQL's) runs without reseeding and says so in its log.
 */
static void
map_counter(void)
{
	int			fd;
	struct stat st;
	void	   *p;

	if (reseed_file == NULL || reseed_file[0] == '\0')
		return;
	fd = open(reseed_file, O_RDWR | O_CREAT, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pgwasm: could not open \"%s\": %m", reseed_file),
				 errdetail("Sessions will not be reseeded after a restore.")));
		return;
	}
	if (fstat(fd, &st) != 0 ||
		(st.st_size < (off_t) sizeof(uint32) && ftruncate(fd, sizeof(uint32)) != 0))
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pgwasm: could not size \"%s\": %m", reseed_file),
				 errdetail("Sessions will not be reseeded after a restore.")));
		close(fd);
		return;
	}
	p = mmap(NULL, sizeof(uint32), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
	{
		ereport(WARNING,
				(errmsg("pgwasm: could not map \"%s\": %m", reseed_file),
				 errdetail("Sessions will not be reseeded after a restore.")));
		return;
	}
	generation = p;
	seen = *generation;
	if (pthread_atfork(NULL, NULL, at_fork_child) != 0)
		ereport(WARNING,
				(errmsg("pgwasm: could not register a fork handler"),
				 errdetail("Every new session after a restore will reseed once more.")));
}

void
_PG_init(void)
{
	/*
	 * The mapping must exist before the postmaster forks; a library loaded
	 * later in one session would reseed that session only.
	 */
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pgwasm must be loaded with shared_preload_libraries")));

	DefineCustomStringVariable("pgwasm.reseed_file",
							   "File on a tmpfs whose counter the guest agent bumps after a restore.",
							   "Every session reseeds its random generators before its next statement when the counter changes. Empty turns reseeding off.",
							   &reseed_file,
							   "",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);
	MarkGUCPrefixReserved("pgwasm");

	map_counter();

	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = pgwasm_ExecutorStart;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = pgwasm_ProcessUtility;
}
