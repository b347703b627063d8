#!/usr/bin/env python3
"""Deterministic data generator for the minigpt project.

Everything is built from an invented world (towns, rivers, people) and from
hand-written templates, so no outside data is needed. Outputs (in --out DIR):

  corpus.txt                  pretraining text, documents separated by one blank line
  facts_dev.jsonl / facts_eval.jsonl   fact completions ("The mayor of Ketamp is" -> the name)
                              of the dev and held-out towns and people, to score pretraining
  sft.jsonl                   chat data for supervised fine-tuning
  sft_dev.jsonl / sft_eval.jsonl  questions about the dev / held-out towns and people, and
                              sums no training file holds: dev to tune on, eval to report
  sft_paraphrase_eval.jsonl   trained facts asked in words no training file uses
  lora.jsonl / lora_eval.jsonl  a new skill: a persona whose replies open with a fixed phrase
  dpo.jsonl / dpo_eval.jsonl  preference pairs (chosen vs rejected answer)

Usage:  python3 scripts/gen_data.py [--seed 1234] [--out data] [--check]
The same seed always gives byte-identical files (standard library only).
"""
import argparse
import json
import os
import re
import random

SEED = 1234
# Sizes are set so the whole default pipeline trains in about five minutes on
# two CPU cores, and the world is small enough (14 towns, 24 people) that a
# 1.3M-parameter model sees each fact in pretraining often enough to learn it.
CORPUS_TARGET_BYTES = 1_000_000
# Towns and people come in three groups: core (in every file), dev and
# held-out (their facts only in corpus.txt; questions about them only in
# sft_dev.jsonl and sft_eval.jsonl). Dev is for tuning, held-out for reporting.
N_TOWNS, N_DEV_TOWNS, N_HELD_TOWNS = 14, 2, 2
N_PEOPLE, N_DEV_PEOPLE, N_HELD_PEOPLE = 24, 4, 4
N_SFT, N_SFT_EVAL_ZH, N_SFT_EVAL_ARITH = 2500, 20, 20
N_PARAPHRASE_EVAL = 80
N_LORA, N_LORA_EVAL = 600, 100
# The LoRA persona opens every reply with this phrase. Its words are common in
# corpus.txt, so their embeddings are trained (LoRA leaves embeddings frozen).
PERSONA = {"en": "Here is the answer. ", "zh": "回答："}
N_DPO, N_DPO_EVAL = 1000, 150     # training pairs are capped by the distinct questions (728 for seed 1234)
ZH_SHARE = 0.23                      # share of Chinese documents in corpus.txt
ZH_CHAT = 0.25                       # share of Chinese conversations in the chat files
SYSTEM = {"en": "You are a helpful assistant.", "zh": "你是一个乐于助人的助手。"}

# ---------------------------------------------------------------------------
# 1. Name syllables: (Latin spelling, fixed Chinese transliteration).
#    A name is first-syllable + second-syllable, so the Chinese name is always
#    consistent with the English one.
# ---------------------------------------------------------------------------
TOWN_A = [("Var", "瓦"), ("Os", "奥"), ("Tel", "泰"), ("Bren", "布伦"), ("Cal", "卡"), ("Dun", "敦"),
          ("Fen", "芬"), ("Gor", "戈"), ("Hal", "哈"), ("Ket", "凯"), ("Lor", "洛"), ("Mor", "莫"),
          ("Pel", "佩"), ("Rav", "拉夫"), ("Sel", "塞"), ("Ulm", "乌尔")]
TOWN_B = [("nel", "奈尔"), ("sk", "斯克"), ("dra", "德拉"), ("vin", "文"), ("rith", "里斯"), ("oth", "索"),
          ("ard", "阿德"), ("und", "恩德"), ("ell", "埃尔"), ("amp", "安普"), ("ir", "伊尔"), ("ek", "埃克")]
PERSON_A = [("Mi", "米"), ("Ta", "塔"), ("Jo", "乔"), ("Li", "莉"), ("Ro", "罗"), ("Be", "贝"), ("Da", "达"),
            ("Ne", "妮"), ("Pa", "帕"), ("Sa", "萨"), ("Hu", "胡"), ("El", "艾"), ("Ti", "蒂"), ("Wi", "维"),
            ("Fa", "法"), ("Go", "高")]
PERSON_B = [("ra", "拉"), ("lo", "洛"), ("ben", "本"), ("na", "娜"), ("rin", "琳"), ("tas", "塔斯"),
            ("mo", "莫"), ("den", "登"), ("sa", "莎"), ("lin", "林"), ("ko", "科"), ("ria", "丽亚")]
WATER_A = [("Tes", "特斯"), ("Am", "阿姆"), ("Dor", "多尔"), ("Bel", "贝尔"), ("Kor", "科尔"), ("Gil", "吉尔"),
           ("Jor", "约尔"), ("Mab", "马布"), ("Nor", "诺尔"), ("Syl", "西尔")]
WATER_B = [("wen", "温"), ("ath", "阿斯"), ("ul", "乌尔"), ("ys", "伊斯"), ("on", "昂"), ("ek", "埃克")]

# Attribute vocabularies: (English, Chinese).
REGIONS = [("north", "北部"), ("south", "南部"), ("east", "东部"), ("west", "西部"), ("centre", "中部")]
PRODUCTS = [("salt", "盐"), ("wool", "羊毛"), ("cheese", "奶酪"), ("glass", "玻璃"), ("timber", "木材"),
            ("pottery", "陶器"), ("honey", "蜂蜜"), ("apples", "苹果"), ("fish", "鱼"), ("iron", "铁"),
            ("rope", "绳子"), ("paper", "纸"), ("tea", "茶"), ("copper", "铜")]
JOBS = [("baker", "面包师"), ("smith", "铁匠"), ("teacher", "老师"), ("fisher", "渔夫"), ("farmer", "农民"),
        ("weaver", "织工"), ("potter", "陶工"), ("miner", "矿工"), ("doctor", "医生"), ("carpenter", "木匠"),
        ("sailor", "水手"), ("shepherd", "牧羊人"), ("miller", "磨坊主"), ("painter", "画家"),
        ("innkeeper", "旅店老板"), ("gardener", "园丁")]
FOODS = [("plum cake", "李子蛋糕"), ("fish soup", "鱼汤"), ("barley bread", "大麦面包"), ("apple pie", "苹果派"),
         ("roast nuts", "烤坚果"), ("honey cakes", "蜂蜜饼"), ("bean stew", "炖豆子"), ("cheese pie", "奶酪派"),
         ("onion soup", "洋葱汤"), ("rice pudding", "米布丁"), ("berry jam", "浆果酱"), ("mushroom pie", "蘑菇派")]
COLOURS = [("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("yellow", "黄色"), ("white", "白色"),
           ("black", "黑色"), ("purple", "紫色"), ("orange", "橙色"), ("grey", "灰色"), ("brown", "棕色")]
ITEMS = [("apples", "苹果"), ("eggs", "鸡蛋"), ("pears", "梨"), ("oranges", "橘子"), ("stones", "石头")]

# ---------------------------------------------------------------------------
# 2. Sentence templates. For every fact kind the FIRST statement is the
#    canonical answer used in SFT/LoRA/DPO; the others add variety to the corpus.
#    Fields: {t} town, {p} person, and the attribute names below.
# ---------------------------------------------------------------------------
STATE = {
    "en": {
        # The first sentence of each kind is the canonical answer. In English it
        # names the town or person after "The ... of": the name then follows a
        # space, the same token as in the question (" Varnel"), which the
        # model can copy; at the start of a reply it would be the token
        # "Varnel", a different one (notebook 05 measures the difference).
        "region": ["The town of {t} is in the {region}.", "{t} lies in the {region}.", "You can find {t} in the {region} of the land."],
        "pop": ["The town of {t} has about {pop} people.", "About {pop} people live in {t}.", "{t} is home to about {pop} people."],
        "year": ["The town of {t} was founded in {year}.", "People built the first houses of {t} in {year}.", "{t} dates from the year {year}."],
        "product": ["The town of {t} is known for its {product}.", "The main trade of {t} is {product}.", "Most families in {t} make a living from {product}."],
        "river": ["The town of {t} is beside the river {river}.", "The river {river} flows past {t}.", "{t} was built on the banks of the river {river}."],
        "mountain": ["The town of {t} lies at the foot of Mount {mount}.", "Mount {mount} rises above {t}.", "From {t} you can see Mount {mount} all day."],
        "neighbour": ["The neighbour town of {t} is {nb}.", "{t} and {nb} are neighbour towns.", "From {t} it is a short walk to {nb}, its neighbour."],
        "mayor": ["The mayor of {t} is {mayor}.", "{mayor} is the mayor of {t}.", "The town of {t} is led by its mayor, {mayor}."],
        "age": ["The age of {p} is {age}.", "{p} is {age} years old.", "{p} turned {age} this year."],
        "job": ["The job of {p} is {job}.", "{p} works as {a_job}.", "By trade, {p} is {a_job}."],
        "home": ["The home of {p} is in {home}.", "{p} lives in {home}.", "{p} comes from {home}."],
        "food": ["The favourite food of {p} is {food}.", "{p} loves to eat {food}.", "Above all other food, {p} likes {food}."],
        "colour": ["The favourite colour of {p} is {colour}.", "{p} likes the colour {colour} best.", "Of all colours, {p} loves {colour} most."],
        "friend": ["The best friend of {p} is {friend}.", "{p} and {friend} are best friends.", "{p} spends a lot of time with {friend}."],
    },
    "zh": {
        "region": ["{t}在{region}。", "{t}位于{region}。", "{t}是{region}的一个小镇。"],
        "pop": ["{t}大约有{pop}人。", "大约{pop}人住在{t}。", "{t}的人口大约是{pop}。"],
        "year": ["{t}建于{year}年。", "{t}的历史从{year}年开始。", "{year}年，人们建起了{t}。"],
        "product": ["{t}以{product}闻名。", "{t}最有名的产品是{product}。", "{t}的很多人家靠{product}为生。"],
        "river": ["{t}在{river}河边。", "{river}河从{t}旁边流过。", "{t}建在{river}河的岸边。"],
        "mountain": ["{t}在{mount}山脚下。", "{mount}山就在{t}的旁边。", "从{t}可以看到{mount}山。"],
        "neighbour": ["{t}的邻镇是{nb}。", "{t}和{nb}是相邻的小镇。", "从{t}走一小段路就到了邻镇{nb}。"],
        "mayor": ["{t}的镇长是{mayor}。", "{mayor}是{t}的镇长。", "管理{t}的镇长叫{mayor}。"],
        "age": ["{p}今年{age}岁。", "{p}已经{age}岁了。"],
        "job": ["{p}是一名{job}。", "{p}的工作是{job}。"],
        "home": ["{p}住在{home}。", "{p}的家在{home}。"],
        "food": ["{p}最喜欢的食物是{food}。", "{p}最爱吃{food}。"],
        "colour": ["{p}最喜欢的颜色是{colour}。", "在所有颜色里，{p}最喜欢{colour}。"],
        "friend": ["{p}最好的朋友是{friend}。", "{p}和{friend}是最好的朋友。"],
    },
}
# Question templates used for SFT, LoRA training and DPO.
ASK = {
    "en": {
        "region": ["Which region is {t} in?", "In which part of the land is {t}?"],
        "pop": ["How many people live in {t}?", "What is the population of {t}?"],
        "year": ["When was {t} founded?", "In what year was {t} founded?"],
        "product": ["What is {t} known for?", "What is the main trade of {t}?"],
        "river": ["What river is {t} beside?", "Which river flows past {t}?"],
        "mountain": ["What mountain is near {t}?", "Which mountain rises above {t}?"],
        "neighbour": ["What is the neighbour town of {t}?", "Which town is next to {t}?"],
        "mayor": ["Who is the mayor of {t}?", "Who leads the town of {t}?"],
        "age": ["How old is {p}?", "What is the age of {p}?"],
        "job": ["What is {p}'s job?", "What does {p} do for work?"],
        "home": ["Where does {p} live?", "Which town is {p} from?"],
        "food": ["What is {p}'s favourite food?", "What food does {p} like best?"],
        "colour": ["What is {p}'s favourite colour?", "Which colour does {p} like best?"],
        "friend": ["Who is {p}'s best friend?", "Who is the best friend of {p}?"],
    },
    "zh": {
        "region": ["{t}在哪个地区？", "{t}位于哪里？"], "pop": ["{t}有多少人？", "{t}的人口是多少？"],
        "year": ["{t}是哪一年建立的？", "{t}建于哪一年？"], "product": ["{t}以什么闻名？", "{t}最有名的产品是什么？"],
        "river": ["{t}在哪条河边？"], "mountain": ["{t}附近有哪座山？"], "neighbour": ["{t}的邻镇是哪里？"],
        "mayor": ["{t}的镇长是谁？"], "age": ["{p}多大了？", "{p}今年几岁？"], "job": ["{p}是做什么工作的？"],
        "home": ["{p}住在哪里？"], "food": ["{p}最喜欢吃什么？"], "colour": ["{p}最喜欢什么颜色？"],
        "friend": ["{p}最好的朋友是谁？"],
    },
}
# Question wordings that no training file uses: sft_paraphrase_eval.jsonl asks
# trained facts in these, to see whether SFT taught answering or memorised
# the questions it saw.
ASK_UNSEEN = {
    "en": {
        "region": "Tell me which region {t} is in.", "pop": "Roughly how many people does {t} have?",
        "year": "Tell me the year {t} was founded.", "product": "What does {t} make a living from?",
        "river": "Name the river beside {t}.", "mountain": "Name the mountain near {t}.",
        "neighbour": "Which town neighbours {t}?", "mayor": "Tell me who the mayor of {t} is.",
        "age": "Tell me the age of {p}.", "job": "What work does {p} do?", "home": "In which town does {p} live?",
        "food": "Which food does {p} love most?", "colour": "Tell me the favourite colour of {p}.",
        "friend": "Who is {p} best friends with?",
    },
    "zh": {
        "region": "{t}在什么地方？", "pop": "{t}住着多少人？", "year": "{t}是什么时候建的？", "product": "{t}的特产是什么？",
        "river": "哪条河流过{t}？", "mountain": "{t}旁边是哪座山？", "neighbour": "和{t}相邻的是哪个镇？",
        "mayor": "谁是{t}的镇长？", "age": "{p}的年龄是多少？", "job": "{p}的职业是什么？", "home": "{p}的家在哪个镇？",
        "food": "{p}最爱吃的是什么？", "colour": "{p}喜欢哪种颜色？", "friend": "谁是{p}最好的朋友？",
    },
}
# Which template field holds the key fact of each kind.
KEY_FIELD = {"region": "region", "pop": "pop", "year": "year", "product": "product", "river": "river",
             "mountain": "mount", "neighbour": "nb", "mayor": "mayor", "age": "age", "job": "job",
             "home": "home", "food": "food", "colour": "colour", "friend": "friend"}
TOWN_KINDS = ["region", "pop", "year", "product", "land", "neighbour", "mayor"]  # "land" = river or mountain
PERSON_KINDS = ["age", "job", "home", "food", "colour", "friend"]

# Short stories about a person, their home town and its neighbour town.
STORIES = {
    "en": ["{p} is {a_job} who lives in {home}. Every morning {p} walks to {land} before work. {p} is {age} years old and thinks that {food} is the best food there is. In the evening {p} often visits {friend}, the best friend of {p}.",
           "Last spring {p} travelled from {home} to {nb}, the neighbour town. In {nb} {p} met the mayor, {nb_mayor}. They talked about {nb_product}, because {nb} is known for its {nb_product}. Then {p} walked home to {home}.",
           "{p} always wears something {colour}, because {colour} is {p}'s favourite colour. {p} works as {a_job} in {home}, a town of about {pop} people. On market days {p} buys {food} and shares it with {friend}.",
           "When {home} was founded in {year}, only a few families lived there. Today about {pop} people live in {home}, and many of them work with {product}. {p}, who is {age} years old, likes to tell this story. The mayor of {home}, {mayor}, tells it too."],
    "zh": ["{p}是一名{job}，住在{home}。每天早上，{p}上班前都会走到{land}旁边。{p}今年{age}岁，觉得{food}是世界上最好吃的东西。晚上，{p}常常去看望最好的朋友{friend}。",
           "去年春天，{p}从{home}走到了邻镇{nb}。在{nb}，{p}见到了镇长{nb_mayor}。他们聊起了{nb_product}，因为{nb}以{nb_product}闻名。然后{p}回到了{home}。",
           "{p}总是穿着{colour}的衣服，因为{p}最喜欢的颜色是{colour}。{p}在{home}当{job}，那里大约有{pop}人。赶集的时候，{p}会买{food}，和{friend}一起分享。",
           "{home}建于{year}年，那时只有几户人家。现在大约有{pop}人住在{home}，很多人靠{product}为生。今年{age}岁的{p}喜欢讲这个故事。{home}的镇长{mayor}也常常讲。"],
}

# Arithmetic: operator words, statements and questions.
OPS = {"+": ("plus", "加"), "-": ("minus", "减"), "*": ("times", "乘以")}
# The first is the canonical answer; in English it starts "The result of", so
# the numbers follow spaces, as in the question (see STATE).
ARITH_STATE = {"en": ["The result of {a} {op} {b} is {c}.", "{a} {op} {b} is {c}.", "If you work out {a} {op} {b}, you get {c}."],
               "zh": ["{a}{op}{b}等于{c}。", "{a}{op}{b}得{c}。", "算一算：{a}{op}{b}，结果是{c}。"]}
ARITH_ASK = {"en": ["What is {a} {op} {b}?", "How much is {a} {op} {b}?", "Can you work out {a} {op} {b}?"],
             "zh": ["{a}{op}{b}等于几？", "请计算{a}{op}{b}。", "{a}{op}{b}是多少？"]}
WORD_PROBLEMS = {
    "en": {"+": "{p} has {a} {item}. {q} gives {p} {b} more. Now {p} has {c} {item}.",
           "-": "{p} has {a} {item}. {p} gives {b} of them to {q}. Now {p} has {c} {item} left.",
           "*": "{p} has {a} baskets with {b} {item} in each basket. That makes {c} {item} in all."},
    "zh": {"+": "{p}有{a}个{item}。{q}又给了{p}{b}个。现在{p}有{c}个{item}。",
           "-": "{p}有{a}个{item}，送给{q}{b}个，现在还剩{c}个{item}。",
           "*": "{p}有{a}个篮子，每个篮子里有{b}个{item}，一共有{c}个{item}。"},
}

# ---------------------------------------------------------------------------
# 3. Training concepts: (English name, Chinese name, English text, Chinese text).
#    The first two sentences are the short SFT answer.
# ---------------------------------------------------------------------------
CONCEPTS = [
    ("the learning rate", "学习率",
     "The learning rate sets how big each update step is when the model changes its weights. If the learning rate is too high, the loss can jump around or even blow up. If it is too low, training is slow and may end before the model has learned much. A good value is often found by trying a few rates on a short run.",
     "学习率决定了模型每次更新权重时步子迈多大。学习率太大，损失会来回跳动，甚至发散。学习率太小，训练会很慢。通常要在短时间的试跑中比较几个不同的值。"),
    ("warmup", "预热",
     "Warmup means starting training with a very small learning rate and raising it step by step to the target value. At the start the weights are random and the gradients can be large, so big steps are risky. A short warmup of a few hundred steps makes the early part of training more stable.",
     "预热是指训练开始时先用很小的学习率，再一步一步把它提高到目标值。刚开始时权重是随机的，梯度可能很大，步子太大会有风险。几百步的预热可以让训练前期更加稳定。"),
    ("a cosine schedule", "余弦调度",
     "A cosine schedule lowers the learning rate along a cosine curve, from its peak value down to a small final value. The rate falls slowly at first, faster in the middle, and slowly again near the end. Small steps at the end help the model settle into good weights. It is often used together with warmup.",
     "余弦调度让学习率沿着余弦曲线从最高值慢慢降到一个很小的最终值。开始时下降得慢，中间下降得快，最后又变慢。训练末期的小步子能帮助模型稳定下来。它常常和预热一起使用。"),
    ("the batch size", "批大小",
     "The batch size is the number of examples the model looks at before it makes one update. A larger batch gives a smoother, less noisy gradient but needs more memory. A smaller batch is noisier but uses less memory. When the batch size changes, the learning rate often needs to change too.",
     "批大小是模型每做一次更新之前看到的样本数量。批越大，梯度越平稳，噪声越小，但需要更多内存。批越小，噪声越大，但更省内存。改变批大小时，学习率往往也需要调整。"),
    ("an epoch", "轮次（epoch）",
     "An epoch is one full pass over the whole training set. A step is one update of the weights using one batch. If the data has 10000 examples and the batch size is 100, one epoch takes 100 steps. Small models on small data are often trained for several epochs.",
     "一个轮次（epoch）是把整个训练集完整地看一遍。一步（step）是用一个批次的数据更新一次权重。如果数据有10000个样本，批大小是100，那么一个轮次就是100步。小模型在小数据上常常训练好几个轮次。"),
    ("gradient accumulation", "梯度累积",
     "Gradient accumulation adds up the gradients of several small batches before making one update. It lets a small machine act as if it used a bigger batch. For example, four batches of 8 examples give about the same update as one batch of 32. The loss of each small batch is divided by the number of batches so the scale stays right.",
     "梯度累积是把几个小批次的梯度加起来，再做一次更新。这样内存较小的机器也能模拟更大的批次。例如，四个大小为8的批次大约相当于一个大小为32的批次。通常要把每个小批次的损失除以批次数，让梯度的大小保持正确。"),
    ("clipping by norm", "按范数裁剪",
     "Clipping by norm measures the length of the whole gradient vector and, if it is longer than a limit, scales it down to that limit. The direction of the gradient stays the same; only its size shrinks. This protects training from a single very large update. A limit of 1.0 is a common choice.",
     "按范数裁剪会计算整个梯度向量的长度，如果超过上限，就把它按比例缩小到上限。梯度的方向不变，只是变短了。这样可以避免一次特别大的更新破坏训练。常用的上限是1.0。"),
    ("clipping by value", "按数值裁剪",
     "Clipping by value forces every single gradient number into a fixed range, such as from minus 1 to 1. Numbers outside the range are set to the nearest edge. It is simple, but it can change the direction of the gradient. For this reason clipping by norm is used more often.",
     "按数值裁剪会把每一个梯度数值都限制在固定范围内，例如从-1到1。超出范围的数会被设成最近的边界值。这种方法很简单，但可能改变梯度的方向。所以按范数裁剪用得更多。"),
    ("overfitting", "过拟合",
     "Overfitting happens when a model learns the training data too closely, noise included, and does worse on new data. A sign of overfitting is a training loss that keeps falling while the validation loss starts to rise. More data, dropout, weight decay or stopping earlier can help.",
     "过拟合是指模型把训练数据学得太死，连其中的噪声也记住了，在新数据上反而表现变差。一个信号是训练损失还在下降，而验证损失开始上升。更多的数据、dropout、权重衰减或者提前停止都有帮助。"),
    ("underfitting", "欠拟合",
     "Underfitting happens when a model has not learned enough, so both the training loss and the validation loss stay high. The model may be too small, the training may be too short, or the learning rate may be badly chosen. A bigger model or more training steps usually help.",
     "欠拟合是指模型学得还不够，训练损失和验证损失都很高。原因可能是模型太小、训练时间太短，或者学习率选得不好。更大的模型或更多的训练步数通常会有帮助。"),
    ("a token", "词元（token）",
     "A token is a small piece of text that the model reads as one unit. A token can be a whole word, part of a word, a single character or a byte. The model never sees raw letters; it sees a list of token ids. Longer texts simply become longer lists of tokens.",
     "词元（token）是模型当作一个单位来读取的一小段文本。一个词元可以是一个完整的词、词的一部分、一个字或者一个字节。模型看不到原始字母，只看到一串词元编号。越长的文本就会变成越长的词元序列。"),
    ("a tokenizer", "分词器",
     "A tokenizer turns text into token ids and turns token ids back into text. Byte pair encoding starts from single bytes and keeps merging the most frequent neighbouring pair into a new token. After many merges, common words become single tokens while rare words are split into pieces. The tokenizer is trained once, before the model.",
     "分词器把文本变成词元编号，也能把词元编号变回文本。字节对编码（BPE）从单个字节开始，不断把最常见的相邻一对合并成新的词元。合并很多次以后，常见的词会变成一个词元，少见的词则被切成几块。分词器要在模型训练之前先训练好。"),
    ("attention", "注意力机制",
     "Attention lets each token look at other tokens and decide which ones matter for it. Each token makes a query, a key and a value. The query is compared with every key to get weights, and the output is a weighted sum of the values. In a GPT model a causal mask stops a token from looking at the tokens after it.",
     "注意力机制让每个词元去看其他词元，并决定哪些对自己重要。每个词元都会生成查询、键和值。查询和每个键比较得到权重，输出就是这些值的加权和。在GPT模型里，因果掩码让一个词元看不到它后面的词元。"),
    ("a residual connection", "残差连接",
     "A residual connection adds the input of a block to its output. Because of this shortcut, the signal and the gradient can pass straight through many layers. This makes deep networks much easier to train. In a transformer, both the attention part and the feed-forward part have a residual connection.",
     "残差连接把一个模块的输入直接加到它的输出上。有了这条捷径，信号和梯度可以直接穿过很多层。这让很深的网络更容易训练。在Transformer里，注意力部分和前馈部分都有残差连接。"),
    ("layer normalization", "层归一化",
     "Layer normalization rescales the numbers in each vector to a mean of zero and a variance of one, then applies a learned scale and shift. It keeps the values in a steady range as they move through the layers. GPT models usually apply it before the attention and feed-forward parts.",
     "层归一化会把每个向量里的数调整成均值为0、方差为1，然后再乘上可学习的缩放并加上偏移。它让数值在穿过各层时保持在稳定的范围内。GPT模型通常在注意力和前馈部分之前使用它。"),
    ("dropout", "dropout",
     "Dropout randomly sets some numbers to zero during training, for example one in ten. The model cannot rely on any single path, so it learns more robust features. Dropout is turned off when the model is evaluated or used to generate text. It is a simple way to fight overfitting.",
     "Dropout在训练时随机把一部分数值设为0，例如十个里面设一个。模型不能依赖某一条固定的路径，所以会学到更稳健的特征。评估或生成文本时要关闭dropout。它是对抗过拟合的一个简单方法。"),
    ("temperature", "温度",
     "Temperature controls how random the sampling is when the model writes text. The logits are divided by the temperature before the softmax. A low temperature makes the model pick likely tokens almost every time, while a high temperature makes rare tokens more likely. A temperature of 1.0 leaves the distribution unchanged.",
     "温度控制模型生成文本时采样的随机程度。在softmax之前，logits要除以温度。温度低时，模型几乎总是选最可能的词元；温度高时，少见的词元也更容易被选中。温度为1.0时，分布保持不变。"),
    ("top-k sampling", "top-k采样",
     "Top-k sampling keeps only the k most likely tokens and sets the chance of all the others to zero. The model then samples from these k tokens. With k equal to 1 it becomes greedy decoding. A small k gives safe but dull text, and a large k gives more variety.",
     "Top-k采样只保留概率最高的k个词元，其余词元的概率都设为0。然后模型只在这k个词元中采样。k等于1时就变成了贪心解码。k小时文本稳妥但单调，k大时文本更多样。"),
    ("top-p sampling", "top-p采样",
     "Top-p sampling, also called nucleus sampling, keeps the smallest set of tokens whose probabilities add up to at least p. If the model is sure, only a few tokens are kept; if it is unsure, many are kept. A value such as 0.9 is common. It adapts to each step better than a fixed k.",
     "Top-p采样也叫核采样，它保留概率加起来至少为p的最少的一组词元。模型很确定时，只留下几个词元；不确定时，会留下很多。常见的取值是0.9。它比固定的k更能适应每一步的情况。"),
    ("LoRA", "LoRA",
     "LoRA fine-tunes a model by freezing the original weights and learning a small low-rank update next to them. The update is the product of two thin matrices, so it has far fewer numbers than the full weight. This saves memory and makes it cheap to keep many small adapters for different tasks. After training, the update can be merged back into the weights.",
     "LoRA在微调时冻结原来的权重，只在旁边学习一个很小的低秩更新。这个更新是两个很窄的矩阵相乘，所以参数比完整的权重少得多。这样既省内存，又可以为不同任务保存很多个小适配器。训练结束后，更新可以合并回原来的权重里。"),
    ("DPO", "DPO",
     "Direct preference optimization, or DPO, trains a model on pairs of answers where one answer is preferred over the other. It raises the probability of the chosen answer and lowers the probability of the rejected one, compared with a frozen reference model. A setting called beta controls how far the model may move from the reference. DPO needs no separate reward model.",
     "直接偏好优化（DPO）用成对的回答来训练模型，其中一个回答比另一个更好。与冻结的参考模型相比，它提高被选中回答的概率，降低被拒绝回答的概率。参数beta控制模型可以离参考模型多远。DPO不需要单独的奖励模型。"),
    ("the cross-entropy loss", "交叉熵损失",
     "The cross-entropy loss measures how surprised the model is by the correct next token. If the model gives the right token a high probability the loss is small, and if it gives it a low probability the loss is large. Training tries to make this loss as small as possible, averaged over all tokens.",
     "交叉熵损失衡量模型对正确的下一个词元有多意外。如果模型给正确词元很高的概率，损失就小；概率很低，损失就大。训练的目标就是让所有词元上的平均损失尽量小。"),
    ("a validation set", "验证集",
     "A validation set is a part of the data that the model never trains on. We measure the loss on it from time to time to see how well the model does on new text. If the training loss falls but the validation loss rises, the model is overfitting.",
     "验证集是模型从来不拿来训练的一部分数据。我们每隔一段时间在上面计算损失，看看模型在新文本上的表现。如果训练损失下降而验证损失上升，说明模型过拟合了。"),
    ("supervised fine-tuning", "监督微调",
     "Supervised fine-tuning, or SFT, teaches a pretrained model to follow a chat format by training it on example conversations. Usually the loss is only computed on the assistant's replies, not on the user's questions. After SFT the model answers questions instead of just continuing text.",
     "监督微调（SFT）用对话示例来训练预训练好的模型，让它学会对话格式。通常只在助手的回答上计算损失，而不在用户的问题上计算。经过SFT之后，模型会回答问题，而不只是接着写文本。"),
    ("an embedding", "嵌入",
     "An embedding table turns each token id into a vector of numbers that the model can work with. Tokens that are used in similar ways end up with similar vectors. A GPT model also adds a position embedding so it knows where each token is in the sequence.",
     "嵌入表把每个词元编号变成一个由数字组成的向量，供模型计算使用。用法相似的词元最后会得到相似的向量。GPT模型还会加上位置嵌入，让模型知道每个词元在序列中的位置。"),
    ("weight decay", "权重衰减",
     "Weight decay gently pulls every weight toward zero at each step. It stops weights from growing too large and helps against overfitting. AdamW applies weight decay directly to the weights, separate from the adaptive gradient step. Biases and layer norm weights are often left without decay.",
     "权重衰减在每一步都会把权重轻轻拉向0。它防止权重变得太大，也有助于避免过拟合。AdamW把权重衰减直接作用在权重上，和自适应的梯度更新分开。偏置和层归一化的权重通常不做衰减。"),
]
CONCEPT_ASK = {"en": ["What is {c}?", "Can you explain {c}?", "Explain {c} in simple words.", "Tell me briefly about {c}."],
               "zh": ["什么是{c}？", "请解释一下{c}。", "{c}是什么意思？", "简单说说{c}。"]}
CONCEPT_INTRO = {"en": ["", "", "Here is a short note about {c}. ", "This is a basic idea in model training. "],
                 "zh": ["", "", "下面简单介绍{c}。", "这是模型训练中的一个基本概念。"]}


def sentences(text, lang):
    """Split a paragraph into sentences (after '. ' in English, after '。' in Chinese)."""
    parts = re.split(r"(?<=\.) " if lang == "en" else r"(?<=。)", text)
    return [s for s in parts if s]


# ---------------------------------------------------------------------------
# 4. The world
# ---------------------------------------------------------------------------
def make_names(rng, first, second, count, taken):
    """Pick `count` new (english, chinese) names. A name is rejected if it is a
    substring of an existing name (or the reverse), in either language, so that
    later text searches for a name can never match another name by accident."""
    combos = [(a, b) for a in first for b in second]
    rng.shuffle(combos)
    out = []
    for a, b in combos:
        en, zh = a[0] + b[0], a[1] + b[1]
        if any(en.lower() in e.lower() or e.lower() in en.lower() or zh in z or z in zh for e, z in taken):
            continue
        taken.append((en, zh))
        out.append({"en": en, "zh": zh})
        if len(out) == count:
            return out
    raise ValueError("not enough distinct names")


def pair_up(rng, items, key):
    """Shuffle items and link them in pairs (a<->b) under `key` (symmetric relation)."""
    items = list(items)
    rng.shuffle(items)
    for a, b in zip(items[0::2], items[1::2]):
        a[key], b[key] = b, a


GROUPS = ["core", "dev", "heldout"]


def group_of(i, n, n_dev, n_held):
    """The group of item i of n: the last n_held are held out, the n_dev before them dev."""
    return "heldout" if i >= n - n_held else ("dev" if i >= n - n_held - n_dev else "core")


def build_world(seed):
    """Build all towns and people. Groups: 'core' (pretraining + every chat
    file), 'dev' and 'heldout' (in pretraining prose; questions only in
    sft_dev.jsonl and sft_eval.jsonl)."""
    rng = random.Random(seed)
    taken = []
    towns = make_names(rng, TOWN_A, TOWN_B, N_TOWNS, taken)
    lands = make_names(rng, WATER_A, WATER_B, N_TOWNS, taken)
    mayors = make_names(rng, PERSON_A, PERSON_B, N_TOWNS, taken)
    people = make_names(rng, PERSON_A, PERSON_B, N_PEOPLE, taken)
    for i, t in enumerate(towns):
        t["group"] = group_of(i, N_TOWNS, N_DEV_TOWNS, N_HELD_TOWNS)
        t["region"] = rng.randrange(len(REGIONS))
        t["pop"] = rng.randrange(8, 96) * 100
        t["year"] = rng.randint(1150, 1890)
        t["product"] = rng.randrange(len(PRODUCTS))
        t["land"] = lands[i]
        t["land_kind"] = rng.choice(["river", "river", "mountain"])
        t["mayor"] = mayors[i]
    for group in GROUPS:                              # neighbours stay inside their group
        pair_up(rng, [t for t in towns if t["group"] == group], "nb")
    for i, p in enumerate(people):                    # people live in towns of their own group
        p["group"] = group_of(i, N_PEOPLE, N_DEV_PEOPLE, N_HELD_PEOPLE)
        p["home"] = rng.choice([t for t in towns if t["group"] == p["group"]])
        p["age"] = rng.randint(18, 79)
        p["job"] = rng.randrange(len(JOBS))
        p["food"] = rng.randrange(len(FOODS))
        p["colour"] = rng.randrange(len(COLOURS))
    for group in GROUPS:
        pair_up(rng, [p for p in people if p["group"] == group], "friend")
    return {"towns": towns, "people": people}


def fields(ent, lang):
    """All template fields of a town or a person, in one language."""
    L = 0 if lang == "en" else 1
    if "pop" in ent:  # a town
        land = ent["land"][lang]
        return {"t": ent[lang], "region": REGIONS[ent["region"]][L], "pop": str(ent["pop"]),
                "year": str(ent["year"]), "product": PRODUCTS[ent["product"]][L], "river": land, "mount": land,
                "land": (("the river " + land) if lang == "en" else land + "河") if ent["land_kind"] == "river"
                else (("Mount " + land) if lang == "en" else land + "山"),
                "nb": ent["nb"][lang], "mayor": ent["mayor"][lang]}
    job = JOBS[ent["job"]][L]
    f = {"p": ent[lang], "age": str(ent["age"]), "job": job, "a_job": ("an " if job[0] in "aeiou" else "a ") + job,
         "food": FOODS[ent["food"]][L], "colour": COLOURS[ent["colour"]][L], "friend": ent["friend"][lang]}
    home = fields(ent["home"], lang)                  # story templates also use the home town's facts
    f.update({k: v for k, v in home.items() if k not in ("t",)})
    f["home"] = home["t"]
    f["nb_mayor"], f["nb_product"] = fields(ent["home"]["nb"], lang)["mayor"], fields(ent["home"]["nb"], lang)["product"]
    return f


def facts_of(ent):
    """List of (kind, entity) facts for a town or a person."""
    if "pop" in ent:
        return [(ent["land_kind"] if k == "land" else k, ent) for k in TOWN_KINDS]
    return [(k, ent) for k in PERSON_KINDS]


def fact_key(fact, lang):
    kind, ent = fact
    return fields(ent, lang)[KEY_FIELD[kind]]


def fact_answer(fact, lang, override=None):
    """Canonical answer sentence; `override` replaces the key value (for wrong DPO answers)."""
    kind, ent = fact
    f = fields(ent, lang)
    if override is not None:
        f[KEY_FIELD[kind]] = override
        if kind == "job" and lang == "en":         # keep the article right ("a baker", "an innkeeper")
            f["a_job"] = ("an " if override[0] in "aeiou" else "a ") + override
    return STATE[lang][kind][0].format(**f)


def arith_triples():
    """All small problems: +/- with 0..20 (no negative results), * with 0..10."""
    out = [("+", a, b) for a in range(21) for b in range(21)]
    out += [("-", a, b) for a in range(21) for b in range(a + 1)]
    out += [("*", a, b) for a in range(11) for b in range(11)]
    return out


def arith_result(tr):
    op, a, b = tr
    return a + b if op == "+" else (a - b if op == "-" else a * b)


def arith_fmt(template, tr, lang, c=None):
    op, a, b = tr
    return template.format(a=a, b=b, op=OPS[op][0 if lang == "en" else 1], c=arith_result(tr) if c is None else c)


# ---------------------------------------------------------------------------
# 5. corpus.txt
# ---------------------------------------------------------------------------
def corpus_docs(world, rng):
    """Yield documents (one paragraph, no newlines) until the byte target is reached.
    Facts come in several wordings and orders, so that the model stores the
    facts rather than the sentences (knowledge augmentation; Allen-Zhu & Li,
    Physics of Language Models 3.1)."""
    old_towns = world["towns"]
    people = world["people"]
    triples = arith_triples()
    join = {"en": " ", "zh": ""}
    total = 0
    while total < CORPUS_TARGET_BYTES:
        lang = "zh" if rng.random() < ZH_SHARE else "en"
        r = rng.random()
        if r < 0.38:    # town fact paragraph: 3-6 facts of one town
            t = rng.choice(old_towns)
            facts = rng.sample(facts_of(t), rng.randint(3, 6))
            doc = join[lang].join(rng.choice(STATE[lang][k]).format(**fields(t, lang)) for k, _ in facts)
        elif r < 0.68:  # person fact paragraph
            p = rng.choice(people)
            facts = rng.sample(facts_of(p), rng.randint(3, 6))
            doc = join[lang].join(rng.choice(STATE[lang][k]).format(**fields(p, lang)) for k, _ in facts)
        elif r < 0.78:  # short story
            p = rng.choice(people)
            doc = rng.choice(STORIES[lang]).format(**fields(p, lang))
        elif r < 0.90:  # a few arithmetic sentences
            doc = join[lang].join(arith_fmt(rng.choice(ARITH_STATE[lang]), rng.choice(triples), lang)
                                  for _ in range(rng.randint(3, 6)))
        elif r < 0.95:  # word problems with the world's people
            probs = []
            for _ in range(rng.randint(1, 2)):
                op, p = rng.choice("+-*"), rng.choice(people)
                if op == "+":
                    a, b = rng.randint(2, 20), rng.randint(2, 20)
                elif op == "-":
                    a = rng.randint(4, 20)
                    b = rng.randint(1, a - 2)
                else:
                    a, b = rng.randint(2, 10), rng.randint(2, 10)
                item = rng.choice(ITEMS)[0 if lang == "en" else 1]
                probs.append(WORD_PROBLEMS[lang][op].format(p=p[lang], q=p["friend"][lang], a=a, b=b, item=item,
                                                            c=arith_result((op, a, b))))
            doc = join[lang].join(probs)
        else:           # a training-concept paragraph, lightly varied
            c_en, c_zh, t_en, t_zh = rng.choice(CONCEPTS)
            sents = sentences(t_en if lang == "en" else t_zh, lang)
            if len(sents) > 3 and rng.random() < 0.4:
                sents = sents[:-1]                     # sometimes drop the last sentence
            intro = rng.choice(CONCEPT_INTRO[lang]).format(c=c_en if lang == "en" else c_zh)
            doc = intro + join[lang].join(sents)
        total += len(doc.encode("utf-8")) + 2
        yield doc


# ---------------------------------------------------------------------------
# 6. Chat data helpers
# ---------------------------------------------------------------------------
def conv(pairs, lang, system=False):
    """Build a conversation from [(question, answer), ...]."""
    msgs = [{"role": "system", "content": SYSTEM[lang]}] if system else []
    for q, a in pairs:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"conversations": msgs}


def fact_qas(facts, ask, prefix=""):
    """All (lang, question, answer, key) items for the given facts and question templates."""
    out = []
    for fact in facts:
        kind, ent = fact
        for lang in ["en", "zh"]:
            for tmpl in ask[lang].get(kind, []):
                q = tmpl.format(**fields(ent, lang))
                out.append((lang, q, prefix + fact_answer(fact, lang), fact_key(fact, lang), fact))
    return out


def arith_qas(triples):
    return [(lang, arith_fmt(tq, tr, lang), arith_fmt(ARITH_STATE[lang][0], tr, lang), str(arith_result(tr)), tr)
            for tr in triples for lang in ["en", "zh"] for tq in ARITH_ASK[lang]]


def concept_qas():
    out = []
    for c_en, c_zh, t_en, t_zh in CONCEPTS:
        for lang, c, text in [("en", c_en, t_en), ("zh", c_zh, t_zh)]:
            ans = {"en": " ", "zh": ""}[lang].join(sentences(text, lang)[:2])
            out += [(lang, tq.format(c=c), ans, None, None) for tq in CONCEPT_ASK[lang]]
    return out


def by_lang(items):
    return {lang: [it for it in items if it[0] == lang] for lang in ["en", "zh"]}


def sample_chats(rng, pools, weights, n, multi=0.10, system=0.10):
    """n conversations; pools: list of by_lang dicts, picked with `weights`."""
    out = []
    for _ in range(n):
        lang = "zh" if rng.random() < ZH_CHAT else "en"
        turns = 2 if rng.random() < multi else 1
        pairs = []
        for _ in range(turns):
            it = rng.choice(rng.choices(pools, weights)[0][lang])
            pairs.append((it[1], it[2]))
        out.append(conv(pairs, lang, system=rng.random() < system))
    return out


def eval_line(it):
    line = conv([(it[1], it[2])], it[0])
    line["answer"] = it[3]
    return line


# ---------------------------------------------------------------------------
# 7. The files
# ---------------------------------------------------------------------------
def group_facts(world, group):
    return [f for e in world["towns"] + world["people"] if e["group"] == group for f in facts_of(e)]


def question_set(rng, facts, triples):
    """Every fact asked once in English, N_SFT_EVAL_ZH of them also in Chinese,
    and each arithmetic triple once: the dev or the held-out questions."""
    items = [rng.choice(by_lang(fact_qas([fact], ASK))["en"]) for fact in facts]
    items += [rng.choice(by_lang(fact_qas([fact], ASK))["zh"]) for fact in rng.sample(facts, N_SFT_EVAL_ZH)]
    for tr in triples:
        lang = "zh" if rng.random() < ZH_CHAT else "en"
        items.append(rng.choice(by_lang(arith_qas([tr]))[lang]))
    rng.shuffle(items)
    return [eval_line(it) for it in items]


def split_sums(rng):
    """(dev, held-out, training) sums: the first two kept out of every training file."""
    triples = arith_triples()
    rng.shuffle(triples)
    n = N_SFT_EVAL_ARITH
    return triples[:n], triples[n:2 * n], triples[2 * n:]


def make_sft(world, rng, sums):
    """sft.jsonl (core facts, training sums, concepts); the dev and held-out
    question sets (their towns and people, and sums kept out of every
    training file); and trained facts in unseen wordings."""
    dev_arith, held_arith, train_arith = sums
    core_facts = group_facts(world, "core")
    pools = [by_lang(fact_qas(core_facts, ASK)), by_lang(arith_qas(train_arith)), by_lang(concept_qas())]
    sft = sample_chats(rng, pools, [0.60, 0.25, 0.15], N_SFT)
    dev = question_set(rng, group_facts(world, "dev"), dev_arith)
    ev = question_set(rng, group_facts(world, "heldout"), held_arith)
    paraphrase = []
    for fact in rng.sample(core_facts, N_PARAPHRASE_EVAL):
        lang = "zh" if rng.random() < ZH_CHAT else "en"
        kind, ent = fact
        question = ASK_UNSEEN[lang][kind].format(**fields(ent, lang))
        paraphrase.append(eval_line((lang, question, fact_answer(fact, lang), fact_key(fact, lang), fact)))
    return sft, dev, ev, paraphrase


def cloze(fact, lang):
    """The canonical statement of a fact cut before its key: (prompt, key)."""
    kind, ent = fact
    f = fields(ent, lang)
    sentence, key = STATE[lang][kind][0].format(**f), f[KEY_FIELD[kind]]
    prompt = sentence[:sentence.index(key)]
    return (prompt.rstrip() if lang == "en" else prompt), key


def make_facts(world, group):
    """Fact completions for pretraining: each fact of the group in English and in Chinese."""
    return [{"prompt": p, "answer": k} for fact in group_facts(world, group) for p, k in
            (cloze(fact, lang) for lang in ["en", "zh"])]


def make_lora(world, rng):
    """The new skill, a persona: the same kind of questions as SFT, but every
    reply opens with a fixed phrase. The SFT model never does this, so its
    task accuracy starts at 0. Eval questions never appear in lora.jsonl."""
    facts = [f for e in world["towns"] + world["people"] if e["group"] == "core" for f in facts_of(e)]
    items = fact_qas(facts, ASK)
    items = [(lang, q, PERSONA[lang] + a, key, fact) for lang, q, a, key, fact in items]
    rng.shuffle(items)
    pool = by_lang(items)
    n_zh = N_LORA_EVAL // 4
    held = pool["en"][:N_LORA_EVAL - n_zh] + pool["zh"][:n_zh]
    train_pool = {"en": pool["en"][N_LORA_EVAL - n_zh:], "zh": pool["zh"][n_zh:]}
    train = sample_chats(rng, [train_pool], [1.0], N_LORA, multi=0.05)
    ev = []
    for lang, q, a, key, fact in held:
        line = conv([(q, a)], lang)
        line["answer"] = PERSONA[lang].strip()
        ev.append(line)
    rng.shuffle(ev)
    return train, ev


def wrong_value(rng, fact, lang, others):
    """A plausible but wrong key value for a fact (or an arithmetic triple)."""
    if fact[0] in OPS:                                   # arithmetic: off by one or two
        c = arith_result(fact)
        return str(max(0, c + rng.choice([-2, -1, 1, 2])) if c > 1 else c + rng.choice([1, 2]))
    kind, ent = fact
    right = fact_key(fact, lang)
    if kind in ("pop", "year", "age"):
        step = {"pop": 100, "year": 1, "age": 1}[kind]
        return str(int(right) + step * rng.choice([-3, -2, -1, 1, 2, 3]))
    choices = sorted({fact_key(f, lang) for f in others if f[0] == kind} - {right})
    return rng.choice(choices)


def rejected_answer(rng, it, others):
    lang, q, good, key, fact = it
    other = "zh" if lang == "en" else "en"
    end = "." if lang == "en" else "。"
    # A wrong number is no rejection style for arithmetic: telling 28 from 30
    # is adding, which the tiny model cannot do and a few hundred pairs do not
    # teach; the preference to learn is the form of the reply.
    styles = ["ramble", "language", "bare"] if fact[0] in OPS else ["wrong", "wrong", "ramble", "language", "bare"]
    style = rng.choice(styles)
    if style == "wrong":
        if fact[0] in OPS:
            return arith_fmt(ARITH_STATE[lang][0], fact, lang, c=wrong_value(rng, fact, lang, others))
        return fact_answer(fact, lang, override=wrong_value(rng, fact, lang, others))
    if style == "ramble":
        sep, filler = (" ", " and") if lang == "en" else ("，", "，然后")
        return good.rstrip(end) + (sep + key) * rng.randint(2, 4) + filler * rng.randint(2, 4)
    if style == "language":
        if fact[0] in OPS:
            return arith_fmt(ARITH_STATE[other][0], fact, other)
        return fact_answer(fact, other)
    return key


def make_dpo(world, rng, train_arith):
    core_facts = [f for e in world["towns"] + world["people"] if e["group"] == "core" for f in facts_of(e)]
    pools = [by_lang(fact_qas(core_facts, ASK)), by_lang(arith_qas(train_arith))]
    train, ev = [], []
    for pool, share in zip(pools, [0.7, 0.3]):
        for lang, lshare in [("en", 0.75), ("zh", 0.25)]:
            items = list(pool[lang])
            rng.shuffle(items)                   # questions are unique, so a split keeps them apart
            n_ev, n_tr = round(N_DPO_EVAL * share * lshare), round(N_DPO * share * lshare)
            for dest, chunk in [(ev, items[:n_ev]), (train, items[n_ev:n_ev + n_tr])]:
                for it in chunk:
                    bad = rejected_answer(rng, it, core_facts)
                    user = {"role": "user", "content": it[1]}
                    dest.append({"chosen": [user, {"role": "assistant", "content": it[2]}],
                                 "rejected": [user, {"role": "assistant", "content": bad}]})
    rng.shuffle(train)
    rng.shuffle(ev)
    return train, ev


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(seed, out):
    os.makedirs(out, exist_ok=True)
    world = build_world(seed)
    # Each file has its own random stream, so changing one generator leaves the others unchanged.
    sums = split_sums(random.Random(seed * 10 + 5))
    docs = list(corpus_docs(world, random.Random(seed * 10 + 1)))
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join(docs) + "\n")
    sft, sft_dev, sft_eval, paraphrase = make_sft(world, random.Random(seed * 10 + 2), sums)
    lora, lora_eval = make_lora(world, random.Random(seed * 10 + 3))
    dpo, dpo_eval = make_dpo(world, random.Random(seed * 10 + 4), sums[2])
    for name, rows in [("facts_dev", make_facts(world, "dev")), ("facts_eval", make_facts(world, "heldout")),
                       ("sft", sft), ("sft_dev", sft_dev), ("sft_eval", sft_eval),
                       ("sft_paraphrase_eval", paraphrase), ("lora", lora), ("lora_eval", lora_eval),
                       ("dpo", dpo), ("dpo_eval", dpo_eval)]:
        write_jsonl(os.path.join(out, name + ".jsonl"), rows)


# ---------------------------------------------------------------------------
# 8. --check: validate the files in --out against the world built from --seed
# ---------------------------------------------------------------------------
def check(seed, out):
    world = build_world(seed)
    errors = []

    def err(msg):
        if len(errors) < 30:
            print("ERROR:", msg)
        errors.append(msg)

    def read(name):
        with open(os.path.join(out, name), encoding="utf-8") as f:
            return f.read()

    def check_turns(msgs, where):
        if msgs and msgs[0].get("role") == "system":
            msgs = msgs[1:]
        if not msgs or len(msgs) % 2:
            err(f"{where}: bad number of turns")
        for i, m in enumerate(msgs):
            if m.get("role") != ("user" if i % 2 == 0 else "assistant"):
                err(f"{where}: roles do not alternate user/assistant")
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                err(f"{where}: empty content")

    data = {}
    for name in ["facts_dev", "facts_eval"]:
        rows = [json.loads(line) for line in read(name + ".jsonl").splitlines()]
        for n, row in enumerate(rows, 1):
            said = row.get("prompt") and row.get("answer") and re.search(
                re.escape(row["prompt"]) + " ?" + re.escape(row["answer"]), read("corpus.txt"))
            if not said:
                err(f"{name}:{n}: a completion must be a prompt and answer whose sentence is in corpus.txt")
        print(f"{name}.jsonl: {len(rows)} lines")
    for name in ["sft", "sft_dev", "sft_eval", "sft_paraphrase_eval", "lora", "lora_eval", "dpo", "dpo_eval"]:
        rows = []
        for n, line in enumerate(read(name + ".jsonl").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                err(f"{name}:{n}: not valid JSON")
                continue
            where = f"{name}:{n}"
            if name.startswith("dpo"):
                check_turns(row["chosen"], where + " chosen")
                check_turns(row["rejected"], where + " rejected")
                if row["chosen"][:-1] != row["rejected"][:-1] or row["chosen"][-1] == row["rejected"][-1]:
                    err(f"{where}: chosen/rejected must share the prompt and differ in the answer")
            else:
                check_turns(row["conversations"], where)
                last = row["conversations"][-1]["content"]
                if name.endswith(("eval", "dev")) and not (row.get("answer") and row["answer"] in last):
                    err(f"{where}: eval 'answer' missing or not in the assistant reply")
                if name.startswith("lora") and not all(m["content"].startswith(tuple(PERSONA.values()))
                                                        for m in row["conversations"] if m["role"] == "assistant"):
                    err(f"{where}: LoRA reply without the persona's opening phrase")
            rows.append(row)
        data[name] = rows

    def users(rows, key="conversations"):
        return {m["content"] for r in rows for m in r[key] if m["role"] == "user"}

    training = ["sft", "lora", "dpo"]
    pairs = [("sft", "sft_eval"), ("sft", "sft_dev"), ("lora", "lora_eval"), ("dpo", "dpo_eval")]
    pairs += [(train, "sft_paraphrase_eval") for train in training]
    for train, ev in pairs:
        key = lambda name: "chosen" if name.startswith("dpo") else "conversations"
        leaked = sorted(users(data[ev], key(ev)) & users(data[train], key(train)))
        if leaked:
            err(f"{ev}: {len(leaked)} eval questions also appear in {train}, e.g. {leaked[0]!r}")
    corpus_text = read("corpus.txt")
    for ev in ["sft_dev", "sft_eval", "sft_paraphrase_eval"]:  # nor in the pretraining text
        asked = [q for q in users(data[ev]) if q in corpus_text]
        if asked:
            err(f"{ev}: the question {asked[0]!r} appears in corpus.txt")
    for ev in ["sft_dev", "sft_eval"]:                # their sums are in no training file either
        for train in training:
            leaked = sorted(q for q in users(data[ev]) & users(data[train], key(train)) if re.search(r"\d", q))
            if leaked:
                err(f"{ev}: the sum {leaked[0]!r} is also asked in {train}")

    # Names that must be absent from some files (English: whole words; Chinese: any substring).
    def names(group):
        towns = [t for t in world["towns"] if t["group"] == group]
        return towns + [t["mayor"] for t in towns] + [p for p in world["people"] if p["group"] == group]

    corpus = read("corpus.txt")
    texts = {n: read(n + ".jsonl") for n in data}
    texts["corpus.txt"] = corpus
    others = ["sft", "dpo", "dpo_eval", "lora", "lora_eval", "sft_paraphrase_eval"]
    rules = [("heldout", others + ["sft_dev"]), ("dev", others + ["sft_eval"])]
    for group, files in rules:
        for ent in names(group):
            for fname in files:
                if re.search(r"\b%s\b" % re.escape(ent["en"]), texts[fname]) or ent["zh"] in texts[fname]:
                    err(f"{group} name {ent['en']}/{ent['zh']} appears in {fname}")
    for t in world["towns"] + world["people"]:    # dev and held-out facts must be in the pretraining prose
        if t["group"] != "core" and (t["en"] not in corpus or t["zh"] not in corpus):
            err(f"{t['group']} name {t['en']} missing from corpus.txt")
    docs = corpus.rstrip("\n").split("\n\n")
    if not corpus.endswith("\n") or any(not d.strip() or "\n" in d for d in docs):
        err("corpus.txt: documents must be single non-empty paragraphs separated by one blank line")
    n_zh = sum(1 for d in docs if re.search(r"[\u4e00-\u9fff]", d))
    print(f"corpus.txt: {len(corpus.encode('utf-8'))} bytes, {len(docs)} documents, "
          f"{100 * n_zh / len(docs):.1f}% Chinese")
    for name, rows in data.items():
        print(f"{name}.jsonl: {len(rows)} lines")
    print("check:", "FAILED (%d errors)" % len(errors) if errors else "OK")
    return not errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=SEED, help="random seed (default %(default)s)")
    ap.add_argument("--out", default="data", help="output directory (default %(default)s)")
    ap.add_argument("--check", action="store_true", help="only validate existing files in --out")
    args = ap.parse_args()
    if args.check:
        raise SystemExit(0 if check(args.seed, args.out) else 1)
    generate(args.seed, args.out)
    print(f"wrote data files to {args.out}/ (seed {args.seed}); run with --check to validate")


if __name__ == "__main__":
    main()
